"""swtpm --log parsing: prefixes, control blocks, libtpms noise, cut dumps, and framing
of the dumps into messages (raw and MS-sim) as the relay would frame them."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tpmsniff.codec.annotate import Annotator
from tpmsniff.inputs.swtpmlog import frames_from_log, parse_file, parse_lines
from tpmsniff.model import Channel, Direction, Framing

DATA = Path(__file__).resolve().parents[2] / "data"
GETRANDOM = bytes.fromhex("80010000000c0000017b0008")
RSP = bytes.fromhex("8001000000140000000000080102030405060708")


def dump(kind: str, data: bytes, prefix: str = " ", announced: int | None = None) -> list[str]:
    lines = [f"{prefix}{kind}: length {len(data) if announced is None else announced}\n"]
    for off in range(0, len(data), 16):
        lines.append(prefix + " ".join(f"{b:02X}" for b in data[off : off + 16]) + " \n")
    return lines


def test_plain_dumps_in_order():
    lines = ["Data client disconnected\n"]
    lines += dump("Ctrl Cmd", bytes.fromhex("0000000500"))
    lines += dump("Ctrl Rsp", bytes(4))
    lines += dump("SWTPM_IO_Read", GETRANDOM)
    lines += dump("SWTPM_IO_Write", RSP)
    got = list(parse_lines(lines))
    assert [(m.kind, m.data) for m in got] == [
        ("ctrl-cmd", bytes.fromhex("0000000500")),
        ("ctrl-rsp", bytes(4)),
        ("tpm-cmd", GETRANDOM),
        ("tpm-rsp", RSP),
    ]
    assert all(m.complete for m in got)
    assert [m.line for m in got] == [2, 4, 6, 8]


def test_prefix_is_learnt_from_the_first_header():
    lines = dump("SWTPM_IO_Read", GETRANDOM, prefix="[vm1] ") + dump(
        "SWTPM_IO_Write", RSP, prefix="[vm1] "
    )
    assert [m.data for m in parse_lines(lines)] == [GETRANDOM, RSP]


def test_libtpms_lines_end_a_dump_and_are_ignored():
    lines = dump("SWTPM_IO_Read", GETRANDOM)
    lines.insert(1, "libtpms/tpm2: something happened\n")
    got = list(parse_lines(lines))
    assert len(got) == 1 and got[0].data == b"" and not got[0].complete


def test_a_cut_dump_is_incomplete():
    got = list(parse_lines(dump("Ctrl Cmd", bytes(12), announced=2000)))
    assert got[0].length == 2000 and len(got[0].data) == 12 and not got[0].complete


@given(st.lists(st.binary(min_size=1, max_size=100), min_size=1, max_size=6))
@settings(max_examples=100)
def test_any_dumped_bytes_parse_back(blobs):
    lines = []
    for i, b in enumerate(blobs):
        lines += dump("SWTPM_IO_Read" if i % 2 == 0 else "SWTPM_IO_Write", b)
    assert [m.data for m in parse_lines(lines)] == blobs


def test_frames_from_log_frames_raw_and_mssim(tmp_path):
    mssim_cmd = (8).to_bytes(4, "big") + b"\x03" + len(GETRANDOM).to_bytes(4, "big") + GETRANDOM
    mssim_rsp = len(RSP).to_bytes(4, "big") + RSP + bytes(4)
    lines = dump("SWTPM_IO_Read", GETRANDOM) + dump("SWTPM_IO_Write", RSP)
    lines += dump("SWTPM_IO_Read", mssim_cmd) + dump("SWTPM_IO_Write", mssim_rsp)
    lines += dump("Ctrl Cmd", bytes.fromhex("0000000500")) + dump("Ctrl Rsp", bytes(4))
    path = tmp_path / "swtpm.log"
    path.write_text("".join(lines))
    frames = list(frames_from_log(str(path), Annotator()))
    assert [f.framing for f in frames] == [
        Framing.RAW,
        Framing.RAW,
        Framing.MSSIM,
        Framing.MSSIM,
        Framing.CTRL,
        Framing.CTRL,
    ]
    assert frames[2].locality == 3 and frames[2].tpm is not None
    assert frames[3].tpm is not None and frames[3].tpm.name == "GetRandom"
    assert [f.channel for f in frames[4:]] == [Channel.CTRL, Channel.CTRL]
    assert frames[5].direction is Direction.RESPONSE and frames[5].ctrl.name == "SET_LOCALITY"
    assert [f.seq for f in frames] == [1, 2, 3, 4, 5, 6]


def test_ctrl_rsp_continued_is_one_reply_with_its_body():
    msgs = [m for m in parse_file(str(DATA / "stateblob.swtpm.log")) if m.kind == "ctrl-rsp"]
    blobs = [m for m in msgs if len(m.data) > 16]
    assert len(msgs) == 4 and len(blobs) == 2  # no duplicated replies
    for m in blobs:
        blob_len = int.from_bytes(m.data[12:16], "big")
        assert m.length == 16 + blob_len and len(m.data) == 16 + 1024  # swtpm cut the dump
        assert m.data[16:18] == b"\x02\x01"  # the blob's own header follows the reply's

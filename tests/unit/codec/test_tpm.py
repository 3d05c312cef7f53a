"""Decoding of bytes recorded from a real tpm2-tools run against swtpm (tests/data)."""

from __future__ import annotations

from conftest import DATA

from tpmsniff.codec.annotate import Annotator
from tpmsniff.codec.tpm import decode_command, decode_response, rc_text
from tpmsniff.inputs.swtpmlog import parse_file
from tpmsniff.model import Channel, Direction, Event, Framing, Message, Verdict

LOG = DATA / "tpm2tools-workload.swtpm.log"


def frames_from_log():
    ann = Annotator()
    out = []
    for m in parse_file(str(LOG)):
        ch = Channel.TPM if m.kind.startswith("tpm") else Channel.CTRL
        d = Direction.COMMAND if m.kind.endswith("cmd") else Direction.RESPONSE
        cmd = None
        if ch is Channel.CTRL and d is Direction.RESPONSE:
            cmd = out[-1].ctrl.cmd
        fr = Framing.RAW if ch is Channel.TPM else Framing.CTRL
        out.append(ann.annotate(1, 0.0, Event(ch, d, Message(m.data, fr), cmd)))
    return out


def test_every_recorded_message_decodes():
    frames = frames_from_log()
    assert len(frames) > 100
    assert [f for f in frames if f.error] == []
    names = {f.name for f in frames if f.tpm}
    assert {"Create", "Unseal", "Load", "NV_Write", "NV_Read", "StartAuthSession"} <= names


def test_tpm2tools_default_unseal_is_plaintext():
    unseal = [
        f for f in frames_from_log() if f.name == "Unseal" and f.direction is Direction.RESPONSE
    ]
    assert unseal and unseal[0].verdict is Verdict.PLAINTEXT
    p = unseal[0].tpm.param
    assert p.type_name == "TPM2B_SENSITIVE_DATA"
    assert unseal[0].raw[p.offset + 2 : p.offset + 2 + p.size] == b"tpmsniff-secret-42"


def test_response_sessions_carry_command_handles():
    f = next(
        f
        for f in frames_from_log()
        if f.name == "Create" and f.direction is Direction.RESPONSE and f.tpm.code == 0
    )
    assert f.tpm.sessions and f.tpm.sessions[0].handle is not None


def test_password_session_flagged():
    # PolicySecret-free Unseal of a sealed object with a password session (TPM_RS_PW, auth "pw")
    cmd = bytes.fromhex("80020000001d0000015e800000010000000b4000000900000100027077")
    cmd = cmd[:2] + len(cmd).to_bytes(4, "big") + cmd[6:]
    info, err = decode_command(cmd)
    assert err is None
    s = info.sessions[0]
    assert s.is_password and s.auth == b"pw"


def test_tpm12_and_unknown_codes_fall_back_to_header():
    info, err = decode_command(bytes.fromhex("00c10000000a000000f1"))
    assert info.header_only and info.name == "TPM1.2 GetTicks" and err is None
    info, err = decode_command(bytes.fromhex("80010000000a20001000"))
    assert info.header_only and err is None
    rsp, err = decode_response(bytes.fromhex("80010000000a00000101"), info)
    assert rsp.code == 0x101 and "failure" in rsp.rc_text


def test_format1_rc_names_session_number():
    assert "session(1)" in rc_text(0x9A2)
    assert "handle(1)" in rc_text(0x18B)


def test_truncated_message_is_annotated_not_raised():
    info, err = decode_command(bytes.fromhex("80020000001400000153810000020000"))
    assert err is not None and info.header_only


def _recorded_tpm_frames():
    from tpmsniff.inputs import frames_from_input

    out = [f for f in frames_from_log() if f.tpm is not None]
    for cap in sorted(DATA.glob("*.pcapng")):
        out += [f for f in frames_from_input(str(cap), Annotator()) if f and f.tpm is not None]
    return out


def test_the_decode_cache_answers_what_decoding_answers():
    """The LRU of decoded messages (fast path) equals decoding afresh (slow path) on every
    recorded message, fields, pytss parameters and errors included, hit or miss."""
    from tpmsniff.codec import tpm

    def wire(p):
        try:
            return type(p).__name__, bytes(p.marshal())
        except Exception:  # an encrypted parameter, or a selector pytss cannot marshal
            return type(p).__name__, None

    def same(a, b):
        assert a[0] == b[0] and a[1] == b[1]
        assert a[0].fields == b[0].fields
        assert [wire(p) for p in a[0].params] == [wire(p) for p in b[0].params]

    frames = _recorded_tpm_frames()
    assert len(frames) > 500
    last_cmd = None
    for _ in range(2):  # a miss, then a hit
        for f in frames:
            msg = f.message
            if f.direction is Direction.COMMAND:
                same(decode_command(msg), tpm._decode_command(msg))
                last_cmd = decode_command(msg)[0]
            else:
                key = (None, "?", True, ())
                if last_cmd is not None:
                    ss = tuple((s.handle, s.attributes & tpm.ENCRYPT) for s in last_cmd.sessions)
                    key = (last_cmd.cc, last_cmd.name, last_cmd.header_only, ss)
                same(decode_response(msg, last_cmd), tpm._decode_response(msg, key))


def test_a_cached_response_still_depends_on_its_commands_sessions():
    from dataclasses import replace

    from tpmsniff.model import Session

    cmd, _ = decode_command(bytes.fromhex("80010000000c0000017b0008"))  # GetRandom
    rsp = bytes.fromhex("8001000000140000000000080102030405060708")
    plain, _ = decode_response(rsp, cmd)
    audit = Session(0x02000000, 0x40, b"", b"")  # encrypt (0x40): the TPM encrypts its answer
    enc_cmd = replace(cmd, sessions=(audit,))
    enc, _ = decode_response(rsp, enc_cmd)
    again, _ = decode_response(rsp, cmd)
    assert plain == again and plain.param.verdict is Verdict.PLAINTEXT
    assert enc.param.verdict is Verdict.ENCRYPTED


def test_cached_parameter_types_are_pytss_own_rule():
    """_wire_types (cached) equals tpm2-pytss's _set_encrypted_parameter for every command
    pytss knows, both directions, with and without a session setting the flag."""
    from tpm2_pytss import command_parser as cp
    from tpm2_pytss.constants import TPM2_CC, TPMA_SESSION

    from tpmsniff.codec import tpm

    class S:
        def __init__(self, attributes):
            self.attributes = attributes

    seen = 0
    for cc in {int(v) for v in vars(TPM2_CC).values() if isinstance(v, int)}:
        for command, flag in ((True, TPMA_SESSION.DECRYPT), (False, TPMA_SESSION.ENCRYPT)):
            try:
                types = tpm._param_types(cc, command)
            except Exception:
                continue  # a code pytss has no class for
            seen += 1
            for sessions in ([], [S(0)], [S(int(flag))], [S(0), S(int(flag) | 1)]):
                flagged = any(s.attributes & flag for s in sessions)
                want = tuple(cp._set_encrypted_parameter(types, sessions, flag))
                assert tpm._wire_types(cc, command, flagged) == want
    assert seen > 150


def test_cached_header_fields_equal_the_fields_built_afresh():
    from tpmsniff.codec import tpm

    for f in _recorded_tpm_frames():
        msg = f.message
        command = f.direction is Direction.COMMAND
        fresh = tpm._head_fields_of.__wrapped__(msg[:10], command)
        assert tpm._head_fields(msg, command) == fresh

"""Field decoding on bytes recorded from a real run (tests/data/all-commands.pcapng: the
tests/helpers/workload_all.py ESAPI workload through tpmsniff against swtpm, every command swtpm
implements): exactness, the JSON Lines schema, the tree, the semantic lines."""

from __future__ import annotations

import json
from functools import cache

from conftest import DATA
from helpers.fieldcheck import check_frames, problems
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tpmsniff.codec.tpm import cc_name, decode_command, decode_response
from tpmsniff.inputs import frames_from_input
from tpmsniff.model import Direction, Frame, Kind
from tpmsniff.sinks.jsonl import frame_to_dict
from tpmsniff.sinks.text import one_line, semantic, tree_lines

CAPTURE = DATA / "all-commands.pcapng"
DIGEST = "62c66a7a5dd70c3146618063c344e531e6d4b59e379808443ce962b3abd63c5a"  # sha256(b"m")


@cache
def frames() -> tuple[Frame, ...]:
    return tuple(frames_from_input(str(CAPTURE)))


def first(name: str, direction: Direction = Direction.COMMAND, ok: bool = True) -> Frame:
    return next(
        f
        for f in frames()
        if f.name == name
        and f.direction is direction
        and (not ok or direction is Direction.COMMAND or f.tpm.code == 0)
    )


def test_recorded_capture_is_exact_and_complete():
    counts = check_frames(frames())
    assert counts == {"messages": 318, "errors": 0, "header_only": 0}
    issued = {f.name for f in frames() if f.tpm and f.direction is Direction.COMMAND}
    assert len(issued) >= 111  # the 110 swtpm implements, and Vendor_TCG_Test
    assert {"ClockRateAdjust", "ECC_Parameters", "EC_Ephemeral"} <= issued
    assert "NV_UndefineSpaceSpecial" in issued and "FIRST" not in issued


def test_names_of_codes():
    assert cc_name(0x11F) == "NV_UndefineSpaceSpecial"
    assert cc_name(0x155) == "HMAC" and cc_name(0x15B) == "HMAC_Start"
    assert cc_name(0x20000000) == "Vendor_TCG_Test"
    assert cc_name(0x20000123) == "Vendor_0x20000123"
    tpm12 = bytes.fromhex("00c1000000120000006500000005000000040000")[:18]
    info, err = decode_command(tpm12)
    assert info.header_only and info.name == "TPM1.2 GetCapability" and err is None
    assert problems(Frame(1, 1, "tpm", Direction.COMMAND, 0.0, tpm12, "raw", tpm=info)) == []


def test_jsonl_schema():
    d = frame_to_dict(first("PCR_Extend"))
    assert d["fields"] == {
        "handles": {"pcrHandle": 16},
        "parameters": {
            "digests": {
                "count": 1,
                "digests": [
                    {
                        "hashAlg": "TPM2_ALG_SHA256",
                        "digest": DIGEST,
                    }
                ],
            }
        },
    }
    d = frame_to_dict(first("NV_DefineSpace"))
    pub = d["fields"]["parameters"]["publicInfo"]
    assert pub["size"] == 14 and pub["nvPublic"]["nvIndex"] == 0x01500100
    assert pub["nvPublic"]["attributes"] == (
        "ownerwrite|authwrite|writedefine|globallock|ownerread|authread|read_stclear"
    )
    assert d["fields"]["handles"] == {"authHandle": 0x40000001}
    d = frame_to_dict(first("CreatePrimary"))
    area = d["fields"]["parameters"]["inPublic"]["publicArea"]
    assert area["type"] == "TPM2_ALG_ECC" and area["nameAlg"] == "TPM2_ALG_SHA256"
    assert area["parameters"]["symmetric"] == {
        "algorithm": "TPM2_ALG_AES",
        "keyBits": 128,
        "mode": "TPM2_ALG_CFB",
    }
    assert area["unique"] == {"x": "", "y": ""}
    d = frame_to_dict(first("GetCapability", Direction.RESPONSE))
    caps = d["fields"]["parameters"]
    assert caps["moreData"] == "TPM2_NO"
    assert caps["capabilityData"]["capability"] == "TPM2_CAP_ALGS"
    alg = caps["capabilityData"]["data"]["algProperties"][0]
    assert alg == {"alg": "TPM2_ALG_RSA", "algProperties": "asymmetric|object"}
    # every TPM message has fields; the whole line is JSON with numbers as numbers
    for f in frames():
        if f.tpm is not None:
            line = json.loads(json.dumps(frame_to_dict(f)))
            assert set(line["fields"]) >= {"handles", "parameters"}


def test_tree_output():
    lines = tree_lines(first("PCR_Extend").tpm.fields)
    assert lines == [
        "    0000 tag: TPM2_ST = TPM2_ST_SESSIONS (0x8002)",
        "    0002 commandSize: UINT32 = 65 (0x00000041)",
        "    0006 commandCode: TPM2_CC = TPM2_CC_PCR_Extend (0x00000182)",
        "    000a pcrHandle: TPM2_HANDLE = 0x00000010",
        "    000e authorizationSize: UINT32 = 9 (0x00000009)",
        "    0012 session[0]: TPMS_AUTH_COMMAND",
        "    0012   sessionHandle: TPM2_HANDLE = 0x40000009 (PW)",
        "    0016   nonce: TPM2B_NONCE = (0) ''",
        "    0018   sessionAttributes: TPMA_SESSION = 0 (0x00)",
        "    0019   hmac: TPM2B_AUTH = (0) ''",
        "    001b digests: TPML_DIGEST_VALUES",
        "    001b   count: UINT32 = 1 (0x00000001)",
        "    001f   digests: TPMT_HA[]",
        "    001f     [0]: TPMT_HA",
        "    001f       hashAlg: TPM2_ALG = TPM2_ALG_SHA256 (0x000b)",
        "    0021       digest: TPMU_HA = "
        "62c66a7a5dd70c3146618063c344e531e6d4b59e379808443ce962b3abd63c5a",
    ]


def test_semantic_lines():
    assert semantic(first("PCR_Extend")) == "PCR_Extend pcr=16 sha256=62c66a7a…"
    assert semantic(first("NV_Write")) == "NV_Write 0x01500100 offset=0 size=32"
    assert semantic(first("NV_Read")) == "NV_Read 0x01500100 offset=0 size=32"
    caps = [semantic(f) for f in frames() if f.name == "GetCapability"]
    assert "GetCapability TPM_PROPERTIES 0x100+64" in caps
    assert "GetCapability -> COMMANDS 64 more=yes" in caps
    assert (
        semantic(first("CreatePrimary")) == "CreatePrimary owner ecc nist_p256 restricted|decrypt"
    )
    loaded = {semantic(f) for f in frames() if f.name == "CreateLoaded"}
    assert "CreateLoaded 0x80000000 rsa2048 decrypt" in loaded
    assert semantic(first("StartAuthSession")) == "StartAuthSession hmac unsalted aes128-cfb sha256"
    assert semantic(first("ClockRateAdjust")) == "ClockRateAdjust owner rateAdjust=medium_slower"
    assert semantic(first("GetRandom", Direction.RESPONSE)) == "GetRandom -> 16 bytes"
    assert one_line(first("NV_Write")).endswith("| NV_Write 0x01500100 offset=0 size=32")


def test_every_field_names_its_type_and_fits_the_message():
    for f in frames():
        if f.tpm is None or f.tpm.fields is None:
            continue
        stack = list(f.tpm.fields.in_order())
        while stack:
            x = stack.pop()
            assert x.name and x.type and 0 <= x.offset <= x.offset + x.size <= f.tpm.size
            if x.kind in (Kind.INT, Kind.BITS):
                assert isinstance(x.value, int)
            stack.extend(x.children)


@cache
def samples() -> tuple[tuple[bytes, bytes], ...]:
    """(command, response) message pairs of the recording."""
    out = []
    last: bytes | None = None
    for f in frames():
        if f.tpm is None:
            continue
        if f.direction is Direction.COMMAND:
            last = f.message
        elif last is not None:
            out.append((last, f.message))
            last = None
    return tuple(out)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_messages_never_crash_and_stay_exact(data):
    """Flip, cut or extend recorded messages: decoding never raises, and whatever it
    decodes without error is exact (every byte explained, values equal their bytes)."""
    cmd, rsp = data.draw(st.sampled_from(samples()))
    which = data.draw(st.booleans())
    msg = bytearray(cmd if which else rsp)
    for _ in range(data.draw(st.integers(0, 3))):
        i = data.draw(st.integers(0, len(msg) - 1))
        msg[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, 4))
    if cut == 1:
        msg = msg[: data.draw(st.integers(0, len(msg)))]
    elif cut == 2:
        msg += data.draw(st.binary(max_size=8))
    raw = bytes(msg)
    if which:
        info, err = decode_command(raw)
        d = Direction.COMMAND
    else:
        info, err = decode_response(raw, decode_command(cmd)[0])
        d = Direction.RESPONSE
    fr = Frame(1, 1, "tpm", d, 0.0, raw, "raw", tpm=info, error=err)
    if err is None and not info.header_only and info.size == len(raw):
        assert problems(fr) == []

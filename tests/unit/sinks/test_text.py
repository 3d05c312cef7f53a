"""The text forms of decoded frames (sinks/text.py): the field tree and the one-line
semantic summaries, on the capture of every command swtpm implements."""

from __future__ import annotations

from helpers.all_commands import first, frames

from tpmsniff.model import Direction
from tpmsniff.sinks.text import one_line, semantic, tree_lines


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

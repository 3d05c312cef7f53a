"""The JSON Lines form of decoded fields (sinks/jsonl.py, docs/jsonl.md), on the capture of
every command swtpm implements."""

from __future__ import annotations

import json

from helpers.all_commands import first, frames

from tpmsniff.model import Direction
from tpmsniff.sinks.jsonl import frame_to_dict

DIGEST = "62c66a7a5dd70c3146618063c344e531e6d4b59e379808443ce962b3abd63c5a"  # sha256(b"m")


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


def test_frame_line_is_the_dict_dumped_on_every_recording_hit_or_miss():
    """The fast line (the decode's JSON made once per distinct decode) equals dumping
    frame_to_dict, for every frame of every recording, twice over (miss, then hit), with
    the file name, a locality and an error set on some."""
    from dataclasses import replace

    from conftest import DATA

    from tpmsniff.codec.annotate import Annotator
    from tpmsniff.inputs import frames_from_input
    from tpmsniff.sinks.jsonl import frame_line

    frames = []
    for cap in [*sorted(DATA.glob("*.pcapng")), *sorted(DATA.glob("*.swtpm.log"))]:
        frames += [f for f in frames_from_input(str(cap), Annotator()) if f is not None]
    assert len(frames) > 600
    odd = [replace(frames[7], locality=3, error='bad "quote" ü'), replace(frames[8], error="x")]
    for _ in range(2):
        for i, f in enumerate([*frames, *odd]):
            file = None if i % 2 else "in ü.pcapng"
            want = json.dumps(frame_to_dict(f, file), separators=(",", ":"))
            assert frame_line(f, file) == want

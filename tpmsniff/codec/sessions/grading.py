"""Grading the first parameter of a message whose session asks for encryption
(docs/verdicts.md): ENCRYPTED (no observer can derive the key), WEAK (one can: the
plaintext is recovered), or UNKNOWN (the session's start was not seen, or its HMAC
does not verify with the derivable key).

The flag is not the verdict: the bytes are (plaintext.py). A structured parameter whose
wire bytes parse exactly, while its decryption does not (or no key is known), was sent
in clear despite the flag: PLAINTEXT. A WEAK decryption that does not parse, of wire
bytes that do not either, is UNKNOWN: the key tpmsniff derived is not the one used."""

from __future__ import annotations

from dataclasses import replace

from ...model import Param, TpmInfo, Verdict
from .decrypt import decrypt_first
from .handles import DECRYPT, TPM_RH_NULL, authorised_entity
from .keys import Candidate
from .plaintext import Shape, inner_type, is_structured, shape
from .proof import Check
from .table import SessionTable


def _in_clear(p: Param, handle: int | None, flag: int, why: str) -> Param:
    what = "decrypt" if flag == DECRYPT else "encrypt"
    return replace(
        p,
        verdict=Verdict.PLAINTEXT,
        session=handle,
        strength=f"sent in clear despite the {what} attribute ({why})",
        plaintext=Shape.PARSED.value,
        recovered=None,
    )


def grade(
    table: SessionTable,
    info: TpmInfo,
    msg: bytes,
    flag: int,
    checks: dict[int, Check],
    cmd: TpmInfo | None = None,
) -> Param:
    """The verdict on `info`'s first parameter; `flag` is DECRYPT (a command) or ENCRYPT
    (a response, whose command is `cmd`)."""
    p = info.param
    g = _grade_key(table, info, msg, flag, checks, cmd)
    if g.verdict not in (Verdict.ENCRYPTED, Verdict.UNKNOWN) or g is p:
        return g
    if p.offset is None or not p.size or not is_structured(p.type_name):
        return g
    wire = msg[p.offset + 2 : p.offset + 2 + p.size]
    if shape(p.type_name, wire) is Shape.PARSED:  # no key known, and the bytes are plain
        return _in_clear(g, g.session, flag, g.strength or "")
    return g


def _grade_key(
    table: SessionTable,
    info: TpmInfo,
    msg: bytes,
    flag: int,
    checks: dict[int, Check],
    cmd: TpmInfo | None = None,
) -> Param:
    """The verdict from what an observer knows of the session's key."""
    p = info.param
    if p.verdict is not Verdict.ENCRYPTED:
        return p
    idx = next((i for i, s in enumerate(info.sessions) if s.attributes & flag), None)
    if idx is None and cmd is not None:  # response: the command asked for encryption
        idx = next((i for i, s in enumerate(cmd.sessions) if s.attributes & flag), None)
    if idx is None or idx >= len(info.sessions):
        return p
    s = info.sessions[idx]
    facts = s.facts
    if facts is None or facts.origin == "unknown" or s.handle not in table.sessions:
        return replace(
            p, verdict=Verdict.UNKNOWN, session=s.handle, strength="session start not seen"
        )
    st = table.sessions[s.handle]
    sym = facts.symmetric
    if st.salted:
        return replace(p, session=s.handle, strength=f"{sym}, salted by {facts.salt_key}")
    check = checks.get(idx)
    value: Candidate | None = None
    proof = "none"
    if check is not None and check.status == "ok" and check.value is not None:
        value = check.value
        if value.auth is None or value.auth_in_hmac or not value.auth[0]:
            proof = "hmac"
        else:  # the HMAC proved the sessionKey; pick the authValue the same way
            value = next((v for v in check.candidates if v.key == value.key and v.auth), value)
    elif check is not None and check.status == "none" and not st.failed and check.candidates:
        value = check.candidates[0]
    if value is None:
        base = cmd if cmd is not None else info
        ent = authorised_entity(base.cc, base.handles, idx)
        if st.bind != TPM_RH_NULL and st.key is None:
            why = f"bound to 0x{st.bind:08x}, authValue never seen"
        elif ent is not None and not table.is_bind(st, ent):
            why = f"authValue of 0x{ent:08x} never seen"
        else:  # every input of the key is known, yet the HMAC does not verify
            return replace(
                p,
                verdict=Verdict.UNKNOWN,
                session=s.handle,
                strength=f"{sym}, HMAC does not verify with the derivable key",
            )
        return replace(p, session=s.handle, strength=f"{sym}, {why}")
    recovered = decrypt_first(info, msg, idx, st, value.enc, cmd)
    how = value.key_src
    if value.auth is not None:
        how += f"; entity {value.auth[1]} authValue"
    weak = replace(
        p,
        verdict=Verdict.WEAK,
        session=s.handle,
        strength=f"{sym}, {how}",
        recovered=recovered,
        proof=proof,
    )
    if not is_structured(p.type_name) or p.offset is None:
        return weak  # a byte string: any decryption reads as one
    if recovered is not None and shape(p.type_name, recovered) is Shape.PARSED:
        return replace(weak, plaintext=Shape.PARSED.value)
    wire = msg[p.offset + 2 : p.offset + 2 + (p.size or 0)]
    if shape(p.type_name, wire) is Shape.PARSED:
        return _in_clear(weak, s.handle, flag, f"{sym}, {how}")
    inner = inner_type(p.type_name)
    return replace(
        weak,
        verdict=Verdict.UNKNOWN,
        recovered=None,
        strength=f"{sym}, {how}: decrypted bytes do not parse as "
        f"{getattr(inner, '__name__', p.type_name)}",
    )

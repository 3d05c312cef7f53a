"""Raw TPM commands for clients that misbehave in ways ESAPI cannot be made to: a
second (slot-2) decrypt session beside a password session whose first parameter goes
in clear, or is random bytes, and a resource manager that context-saves, flushes and
reloads every object and session around each command, like the Linux kernel's.

ESAPI (tpm2-pytss) sets up objects and sessions; the misbehaving command is marshalled
with pytss types and sent through the same TCTI with `transmit`/`receive`. The slot-2
session authorises no handle, so its HMAC key is its sessionKey (empty for an unsalted,
unbound session); computed with `cryptography`.
"""

from __future__ import annotations

import hashlib
import os
import struct

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from tpm2_pytss import ESAPI
from tpm2_pytss.constants import TPM2_CC, TPMA_OBJECT
from tpm2_pytss.types import (
    TPM2B_AUTH,
    TPM2B_DATA,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPM2B_SENSITIVE_DATA,
    TPML_PCR_SELECTION,
    TPMS_SENSITIVE_CREATE,
)

from helpers.scenarios import (
    AES128CFB,
    OBJECT_AUTH,
    SECRET,
    XOR_SHA256,
    esapi,
    flush_all,
    primary,
    sealed_object,
    session,
)

TPM_RS_PW = 0x40000009
CONTINUE_DECRYPT = 0x21  # continueSession | decrypt
RC_RETRY = (0x922).to_bytes(4, "big")


def _transact(e: ESAPI, cmd: bytes) -> bytes:
    """One raw command through the TCTI ESAPI was built on (idle between its calls);
    sent again while the TPM answers TPM_RC_RETRY."""
    tcti = e._tcti
    for _ in range(10):
        tcti.transmit(cmd)
        rsp = bytes(tcti.receive())
        if rsp[6:10] != RC_RETRY:
            break
    return rsp


def _sealed_public() -> bytes:
    pub = TPM2B_PUBLIC.parse(
        "keyedhash",
        objectAttributes=TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT,
    )
    return bytes(pub.marshal())


def in_sensitive() -> bytes:
    """TPM2B_SENSITIVE_CREATE with the object's password and the sealed SECRET."""
    sens = TPM2B_SENSITIVE_CREATE(
        TPMS_SENSITIVE_CREATE(userAuth=TPM2B_AUTH(OBJECT_AUTH), data=TPM2B_SENSITIVE_DATA(SECRET))
    )
    return bytes(sens.marshal())


def _kdfa_256(key: bytes, label: bytes, u: bytes, v: bytes) -> bytes:
    """KDFa(SHA256, key, label, u, v, 256): one HMAC block (Part 1 §11.4.10.2)."""
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(b"\0\0\0\1" + label + b"\0" + u + v + (256).to_bytes(4, "big"))
    return mac.finalize()


def start_session(e: ESAPI, prim, salted: bool, sym: str) -> tuple[int, bytes, bytes]:
    """A raw StartAuthSession (HMAC session, SHA256, unbound), salted to `prim` or not.
    Returns (handle, sessionKey, nonceTPM)."""
    nonce_caller = os.urandom(16)
    tpm_key, secret, salt = 0x40000007, b"", b""
    if salted:
        pub = e.read_public(prim)[0].publicArea
        n = int.from_bytes(bytes(pub.unique.rsa), "big")
        exp = int(pub.parameters.rsaDetail.exponent) or 65537
        salt = os.urandom(32)
        key = rsa.RSAPublicNumbers(exp, n).public_key()
        oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), b"SECRET\0")
        secret = key.encrypt(salt, oaep)
        tpm_key = e.tr_get_tpm_handle(prim)
    symdef = XOR_SHA256 if sym == "xor" else AES128CFB
    params = (
        struct.pack(">H", 16)
        + nonce_caller
        + struct.pack(">H", len(secret))
        + secret
        + b"\0"  # TPM2_SE_HMAC
        + bytes(symdef.marshal())
        + struct.pack(">H", 0x000B)
    )
    body = struct.pack(">II", tpm_key, 0x40000007) + params
    cc = int(TPM2_CC.StartAuthSession)
    rsp = _transact(e, struct.pack(">HII", 0x8001, 10 + len(body), cc) + body)
    assert rsp[6:10] == b"\0\0\0\0", rsp[6:10].hex()
    handle = int.from_bytes(rsp[10:14], "big")
    nsize = int.from_bytes(rsp[14:16], "big")
    nonce_tpm = rsp[16 : 16 + nsize]
    key = _kdfa_256(salt, b"ATH", nonce_tpm, nonce_caller) if salted else b""
    return handle, key, nonce_tpm


def create_slot2(tcti_conf: str, salted: bool, sym: str, garbage: bool = False) -> int:
    """Create under a primary, authorised by a password session, with a slot-2 session
    that sets decrypt and whose HMAC is right. The parameter goes in clear (`garbage`:
    random bytes of the same size, as if encrypted with a key no one derives). Returns
    the TPM's response code."""
    e = esapi(tcti_conf)
    try:
        prim = primary(e)
        handle, session_key, nonce_tpm = start_session(e, prim, salted, sym)
        sens = in_sensitive()
        if garbage:
            sens = sens[:2] + os.urandom(len(sens) - 2)
        params = (
            sens
            + _sealed_public()
            + bytes(TPM2B_DATA().marshal())
            + bytes(TPML_PCR_SELECTION().marshal())
        )
        parent = e.tr_get_tpm_handle(prim)
        nonce_caller = os.urandom(16)
        cc = int(TPM2_CC.Create)
        cp_hash = hashlib.sha256(
            cc.to_bytes(4, "big") + bytes(e.tr_get_name(prim).marshal())[2:] + params
        ).digest()
        mac = hmac.HMAC(session_key, hashes.SHA256())  # no handle: sessionValue = sessionKey
        mac.update(cp_hash + nonce_caller + nonce_tpm + bytes([CONTINUE_DECRYPT]))
        auth = struct.pack(">IHBH", TPM_RS_PW, 0, 0, 0) + struct.pack(
            ">IH16sBH32s", handle, 16, nonce_caller, CONTINUE_DECRYPT, 32, mac.finalize()
        )
        body = struct.pack(">I", parent) + struct.pack(">I", len(auth)) + auth + params
        rsp = _transact(e, struct.pack(">HII", 0x8002, 10 + len(body), cc) + body)
        return int.from_bytes(rsp[6:10], "big")
    finally:
        flush_all(e)
        e.close()


def rm_swapped(tcti_conf: str) -> bytes:
    """Seal and unseal through a session salted by a primary key, with every object and
    session context-saved, flushed (objects) and reloaded around each command, as the
    kernel resource manager does: the primary comes back at another handle."""
    e = esapi(tcti_conf)
    try:
        prim = primary(e)

        def swap_object(obj):
            ctx = e.context_save(obj)
            e.flush_context(obj)
            return e.context_load(ctx)

        prim = swap_object(prim)
        other = primary(e)  # takes the freed handle: the primary is renumbered on reload
        prim = swap_object(prim)
        e.flush_context(other)
        s = session(e, "aes", tpm_key=prim)
        s = e.context_load(e.context_save(s))
        prim = swap_object(prim)
        obj = sealed_object(e, prim, SECRET, session=s)
        s = e.context_load(e.context_save(s))
        obj = swap_object(obj)
        out = bytes(e.unseal(obj, session1=s))
        e.flush_context(s)
        return out
    finally:
        flush_all(e)
        e.close()

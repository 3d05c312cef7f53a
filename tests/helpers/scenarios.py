"""tpm2-pytss ESAPI scenarios for the session/verdict matrix (test_session_verdicts.py,
test_secret_checks.py) and the recordings in tests/data/esapi-*.pcapng."""

from __future__ import annotations

import hashlib

from tpm2_pytss import ESAPI, TCTILdr
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_SE, TPMA_NV, TPMA_OBJECT, TPMA_SESSION
from tpm2_pytss.types import (
    TPM2B_AUTH,
    TPM2B_NV_PUBLIC,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPM2B_SENSITIVE_DATA,
    TPMS_NV_PUBLIC,
    TPMS_SENSITIVE_CREATE,
    TPMT_SYM_DEF,
)

SECRET = b"scenario-secret-0123456789"
AES128CFB = TPMT_SYM_DEF(algorithm=TPM2_ALG.AES)
AES128CFB.keyBits.aes = 128
AES128CFB.mode.aes = TPM2_ALG.CFB
XOR_SHA256 = TPMT_SYM_DEF(algorithm=TPM2_ALG.XOR)
XOR_SHA256.keyBits.exclusiveOr = TPM2_ALG.SHA256
ENC_DEC = TPMA_SESSION.CONTINUESESSION | TPMA_SESSION.DECRYPT | TPMA_SESSION.ENCRYPT


def esapi(tcti_conf: str) -> ESAPI:
    kind, _, conf = tcti_conf.partition(":")
    return ESAPI(TCTILdr(kind, conf))


def flush_all(e: ESAPI) -> None:
    """No resource manager in front of swtpm: leave no transient object or session behind."""
    from tpm2_pytss.constants import TPM2_CAP, TPM2_HR

    for first in (TPM2_HR.TRANSIENT, TPM2_HR.HMAC_SESSION, TPM2_HR.POLICY_SESSION):
        _, data = e.get_capability(TPM2_CAP.HANDLES, first, 64)
        for h in data.data.handles:
            e.flush_context(e.tr_from_tpmpublic(h) if h >> 24 == 0x80 else _session_tr(e, h))


def _session_tr(e: ESAPI, handle: int):
    return e.tr_from_tpmpublic(handle)


def primary(e: ESAPI, auth: bytes = b"", session=ESYS_TR.PASSWORD):
    pub = TPM2B_PUBLIC.parse(
        "rsa2048", objectAttributes=TPMA_OBJECT.DEFAULT_TPM2_TOOLS_CREATEPRIMARY_ATTRS
    )
    sens = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(userAuth=TPM2B_AUTH(auth)))
    handle, *_ = e.create_primary(sens, pub, session1=session)
    if auth:
        e.tr_set_auth(handle, auth)
    return handle


# PolicyDigest of a policy made of TPM2_PolicyAuthValue alone (Part 3 §23.18)
POLICY_AUTHVALUE = hashlib.sha256(b"\0" * 32 + (0x16B).to_bytes(4, "big")).digest()


def sealed_object(
    e: ESAPI,
    parent,
    secret: bytes,
    session=ESYS_TR.PASSWORD,
    policy: bytes = b"",
    session2=ESYS_TR.NONE,
    auth: bytes = b"",
):
    sens = TPM2B_SENSITIVE_CREATE(
        TPMS_SENSITIVE_CREATE(userAuth=TPM2B_AUTH(auth), data=TPM2B_SENSITIVE_DATA(secret))
    )
    pub = TPM2B_PUBLIC.parse(
        "keyedhash",
        objectAttributes=TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT,
    )
    if policy:
        pub.publicArea.authPolicy = policy
    priv, pub2, *_ = e.create(parent, sens, pub, session1=session, session2=session2)
    obj = e.load(parent, priv, pub2, session1=session)
    if auth:
        e.tr_set_auth(obj, auth)
    return obj


def session(e: ESAPI, kind: str, tpm_key=ESYS_TR.NONE, bind=ESYS_TR.NONE):
    sym = XOR_SHA256 if kind == "xor" else AES128CFB
    se = TPM2_SE.POLICY if kind == "policy" else TPM2_SE.HMAC
    s = e.start_auth_session(tpm_key, bind, se, sym, TPM2_ALG.SHA256)
    e.trsess_set_attributes(s, ENC_DEC)
    return s


PRIMARY_AUTH = b"primary-auth-5150"
OBJECT_AUTH = b"object-auth-8086"
PERSISTENT = 0x81000077


def seal_unseal(tcti: str, kind: str) -> bytes:
    """kind: password | salted | unsalted | xor | xor-salted | bound | policy, and the
    secret-check matrix: salted-persistent | bound-learned | bound-hidden | pw-plus-encrypt |
    policy-password."""
    if kind in MATRIX:
        return MATRIX[kind](tcti)
    e = esapi(tcti)
    try:
        prim = primary(e)
        if kind == "password":
            obj = sealed_object(e, prim, SECRET)
            return bytes(e.unseal(obj))
        if kind == "salted":
            s = session(e, "aes", tpm_key=prim)
        elif kind == "bound":
            s = session(e, "aes", bind=prim)
        elif kind == "xor":
            s = session(e, "xor")
        elif kind == "xor-salted":
            s = session(e, "xor", tpm_key=prim)
        elif kind == "policy":
            s = session(e, "policy")
            e.policy_auth_value(s)
        else:
            s = session(e, "aes")
        if kind == "policy":
            # a policy session authorises the unseal; a second (HMAC) session encrypts Create
            enc = session(e, "aes", tpm_key=prim)
            obj = sealed_object(e, prim, SECRET, session=enc, policy=POLICY_AUTHVALUE)
            e.flush_context(enc)
            e.tr_set_auth(obj, b"")
            return bytes(e.unseal(obj, session1=s))
        obj = sealed_object(e, prim, SECRET, session=s)
        out = bytes(e.unseal(obj, session1=s))
        e.flush_context(s)
        return out
    finally:
        flush_all(e)
        e.close()


def nv_roundtrip(
    tcti: str, encrypted: bool | str, index: int = 0x01500020, nv_auth: bytes = b""
) -> bytes:
    """encrypted: False, True (salted session), or "unsalted" (unsalted, unbound)."""
    e = esapi(tcti)
    try:
        nvpub = TPM2B_NV_PUBLIC(
            nvPublic=TPMS_NV_PUBLIC(
                nvIndex=index,
                nameAlg=TPM2_ALG.SHA256,
                attributes=TPMA_NV.OWNERWRITE
                | TPMA_NV.OWNERREAD
                | TPMA_NV.AUTHREAD
                | TPMA_NV.AUTHWRITE,
                dataSize=len(SECRET),
            )
        )
        nv = e.nv_define_space(TPM2B_AUTH(nv_auth), nvpub)
        kwargs = {}
        if encrypted == "unsalted":
            kwargs = {"session2": session(e, "aes")}
        elif encrypted:
            prim = primary(e)
            s = session(e, "aes", tpm_key=prim)
            kwargs = {"session2": s}
        e.nv_write(nv, SECRET, 0, ESYS_TR.RH_OWNER, **kwargs)
        out = bytes(e.nv_read(nv, len(SECRET), 0, ESYS_TR.RH_OWNER, **kwargs))
        e.nv_undefine_space(nv, ESYS_TR.RH_OWNER)
        return out
    finally:
        flush_all(e)
        e.close()


def _run(tcti: str, body) -> bytes:
    e = esapi(tcti)
    try:
        return body(e)
    finally:
        flush_all(e)
        e.close()


def _seal_with(e: ESAPI, parent, s) -> bytes:
    obj = sealed_object(e, parent, SECRET, session=s)
    out = bytes(e.unseal(obj, session1=s))
    e.flush_context(s)
    return out


def salted_persistent(tcti: str) -> bytes:
    """A session salted by a persistent key (EvictControl'd primary): pass."""

    def body(e: ESAPI) -> bytes:
        prim = primary(e)
        pers = e.evict_control(ESYS_TR.RH_OWNER, prim, PERSISTENT)
        e.flush_context(prim)
        try:
            return _seal_with(e, pers, session(e, "aes", tpm_key=pers))
        finally:
            e.evict_control(ESYS_TR.RH_OWNER, pers, PERSISTENT)

    return _run(tcti, body)


def bound_learned(tcti: str) -> bytes:
    """Bound to a primary whose userAuth crossed in clear (CreatePrimary, password): fail."""

    def body(e: ESAPI) -> bytes:
        prim = primary(e, PRIMARY_AUTH)
        return _seal_with(e, prim, session(e, "aes", bind=prim))

    return _run(tcti, body)


def bound_hidden(tcti: str) -> bytes:
    """Bound to a primary whose userAuth crossed only under a salted session: pass."""

    def body(e: ESAPI) -> bytes:
        salt = primary(e)
        s0 = session(e, "aes", tpm_key=salt)
        prim = primary(e, PRIMARY_AUTH, session=s0)
        e.flush_context(s0)
        e.flush_context(salt)
        return _seal_with(e, prim, session(e, "aes", bind=prim))

    return _run(tcti, body)


def pw_plus_encrypt(tcti: str) -> bytes:
    """Password authorisation plus a separate unsalted encrypt session in slot 2: fail."""

    def body(e: ESAPI) -> bytes:
        prim = primary(e)
        s = session(e, "aes")
        obj = sealed_object(e, prim, SECRET, session=ESYS_TR.PASSWORD, session2=s, auth=OBJECT_AUTH)
        out = bytes(e.unseal(obj, session1=ESYS_TR.PASSWORD, session2=s))
        e.flush_context(s)
        return out

    return _run(tcti, body)


def _policy_unseal(tcti: str, policy_command: str) -> bytes:
    """Unseal, in a policy session run through `policy_command`, an object whose
    authValue crossed only encrypted."""

    def body(e: ESAPI) -> bytes:
        prim = primary(e)
        enc = session(e, "aes", tpm_key=prim)
        obj = sealed_object(e, prim, SECRET, session=enc, policy=POLICY_AUTHVALUE, auth=OBJECT_AUTH)
        e.flush_context(enc)
        s = session(e, "policy")
        getattr(e, policy_command)(s)
        return bytes(e.unseal(obj, session1=s))

    return _run(tcti, body)


def policy_password(tcti: str) -> bytes:
    """PolicyPassword: the command's HMAC field is the object's authValue, in clear."""
    return _policy_unseal(tcti, "policy_password")


def policy_authvalue(tcti: str) -> bytes:
    """PolicyAuthValue with an object authValue that crossed only encrypted: the policy
    session's key includes it, so the Unseal stays ENCRYPTED: pass."""
    return _policy_unseal(tcti, "policy_auth_value")


def cascade(tcti: str) -> bytes:
    """A primary's userAuth crossed inside a WEAK (unsalted, unbound) session: tpmsniff
    decrypts it, learns it, and so derives the next session, bound to that primary."""

    def body(e: ESAPI) -> bytes:
        s0 = session(e, "aes")
        prim = primary(e, PRIMARY_AUTH, session=s0)
        e.flush_context(s0)
        return _seal_with(e, prim, session(e, "aes", bind=prim))

    return _run(tcti, body)


OWNER_AUTH = b"owner-auth-6502"


def hierarchy_auth(tcti: str) -> bytes:
    """The owner authValue set in clear (HierarchyChangeAuth under a password session),
    then a session bound to the owner hierarchy: derivable."""

    def body(e: ESAPI) -> bytes:
        e.hierarchy_change_auth(ESYS_TR.RH_OWNER, OWNER_AUTH)
        e.tr_set_auth(ESYS_TR.RH_OWNER, OWNER_AUTH)
        try:
            s = session(e, "aes", bind=ESYS_TR.RH_OWNER)
            prim = primary(e, session=s)
            return _seal_with(e, prim, s)
        finally:
            e.hierarchy_change_auth(ESYS_TR.RH_OWNER, b"")
            e.tr_set_auth(ESYS_TR.RH_OWNER, b"")

    return _run(tcti, body)


EXTERNAL_AUTH = b"external-auth-2600"


def load_external(tcti: str) -> bytes:
    """A key loaded with LoadExternal (its sensitive area, authValue included, in clear),
    then a session bound to it encrypts the seal and unseal: derivable."""
    from tpm2_pytss.types import TPM2B_PUBLIC as PUB
    from tpm2_pytss.types import TPM2B_SENSITIVE, TPMT_SENSITIVE

    def body(e: ESAPI) -> bytes:
        sens, pub = TPMT_SENSITIVE.keyedhash_from_secret(b"an hmac key for tpmsniff")
        sens.authValue = TPM2B_AUTH(EXTERNAL_AUTH)
        ext = e.load_external(PUB(pub), TPM2B_SENSITIVE(sens), ESYS_TR.RH_NULL)
        e.tr_set_auth(ext, EXTERNAL_AUTH)
        prim = primary(e)
        return _seal_with(e, prim, session(e, "aes", bind=ext))

    return _run(tcti, body)


def rm_swapped(tcti: str) -> bytes:
    """Issue #17: every object and session context-swapped like the kernel RM does."""
    from helpers.rawtpm import rm_swapped as run  # rawtpm builds on this module

    return run(tcti)


MATRIX = {
    "rm-swapped": rm_swapped,
    "load-external": load_external,
    "cascade": cascade,
    "hierarchy-auth": hierarchy_auth,
    "salted-persistent": salted_persistent,
    "bound-learned": bound_learned,
    "bound-hidden": bound_hidden,
    "pw-plus-encrypt": pw_plus_encrypt,
    "policy-password": policy_password,
    "policy-authvalue-hidden": policy_authvalue,
}

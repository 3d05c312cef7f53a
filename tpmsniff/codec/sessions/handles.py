"""What a command says about its handles and sessions: which handles its first sessions
authorise (Part 3 "@" handles), the session attribute bits, hierarchy names, and `--auth`."""

from __future__ import annotations

from tpm2_pytss.constants import TPM2_CC, TPM2_RH

TPM_RH_NULL = int(TPM2_RH.NULL)
CONTINUE, DECRYPT, ENCRYPT = 0x01, 0x20, 0x40
# commands whose handles need no authorization (Part 3 "@" handles), and those with two
ZERO_AUTH = {
    TPM2_CC.ReadPublic,
    TPM2_CC.NV_ReadPublic,
    TPM2_CC.ContextSave,
    TPM2_CC.StartAuthSession,
    TPM2_CC.RSA_Encrypt,
    TPM2_CC.ECDH_KeyGen,
    TPM2_CC.VerifySignature,
    TPM2_CC.MakeCredential,
    TPM2_CC.PolicySigned,
    TPM2_CC.PolicyTicket,
    TPM2_CC.PolicyOR,
    TPM2_CC.PolicyPCR,
    TPM2_CC.PolicyLocality,
    TPM2_CC.PolicyCounterTimer,
    TPM2_CC.PolicyCommandCode,
    TPM2_CC.PolicyPhysicalPresence,
    TPM2_CC.PolicyCpHash,
    TPM2_CC.PolicyNameHash,
    TPM2_CC.PolicyDuplicationSelect,
    TPM2_CC.PolicyAuthorize,
    TPM2_CC.PolicyAuthValue,
    TPM2_CC.PolicyPassword,
    TPM2_CC.PolicyGetDigest,
    TPM2_CC.PolicyNvWritten,
    TPM2_CC.PolicyTemplate,
    TPM2_CC.PolicyRestart,
}
TWO_AUTH = {
    TPM2_CC.Certify,
    TPM2_CC.ActivateCredential,
    TPM2_CC.NV_UndefineSpaceSpecial,
    TPM2_CC.NV_Certify,
    TPM2_CC.GetSessionAuditDigest,
    TPM2_CC.GetCommandAuditDigest,
    TPM2_CC.GetTime,
    TPM2_CC.CertifyX509,
    TPM2_CC.EventSequenceComplete,
}
HIERARCHIES = {
    int(TPM2_RH.OWNER): "owner",
    int(TPM2_RH.ENDORSEMENT): "endorsement",
    int(TPM2_RH.PLATFORM): "platform",
    TPM_RH_NULL: "NULL",
}
AUTH_NAMES = {
    "owner": int(TPM2_RH.OWNER),
    "endorsement": int(TPM2_RH.ENDORSEMENT),
    "platform": int(TPM2_RH.PLATFORM),
    "lockout": int(TPM2_RH.LOCKOUT),
    "null": TPM_RH_NULL,
}


def parse_auth(text: str) -> tuple[int, bytes]:
    """`HANDLE=VALUE`: HANDLE hex or owner/endorsement/platform/lockout; VALUE text or hex:…"""
    handle, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"--auth {text!r}: expected HANDLE=VALUE")
    h = AUTH_NAMES.get(handle.lower())
    if h is None:
        try:
            h = int(handle, 16)
        except ValueError:
            raise ValueError(
                f"--auth {text!r}: HANDLE is hex or owner/endorsement/platform/lockout"
            ) from None
    if value.startswith("hex:"):
        try:
            return h, bytes.fromhex(value[4:])
        except ValueError:
            raise ValueError(f"--auth {text!r}: bad hex") from None
    return h, value.encode()


def auth_handle_count(cc: int | None, handles: int) -> int:
    """How many of a command's handles are authorised by its first sessions."""
    if cc is None or not handles or cc in ZERO_AUTH:
        return 0
    return min(handles, 2 if cc in TWO_AUTH else 1)


def authorised_entity(cc: int | None, handles: tuple[int, ...], i: int) -> int | None:
    """The handle session `i` of a command authorises (None: it authorises none)."""
    return handles[i] if i < auth_handle_count(cc, len(handles)) else None

"""A tpm2-pytss ESAPI workload that puts (nearly) every command swtpm implements on the
bus, for the decoder's completeness and exactness tests (issue 12).

Many calls are expected to fail at the TPM (wrong policy, no such object, platform-only
state): a command the TPM refuses still crossed the bus and must decode exactly, and its
error response too. A call ESYS refuses locally never reaches the bus; the test's
coverage assertion catches those. ECC keys throughout (fast on swtpm); one RSA key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from tpm2_pytss import ESAPI, TCTILdr
from tpm2_pytss.constants import (
    ESYS_TR,
    TPM2_ALG,
    TPM2_CAP,
    TPM2_CC,
    TPM2_CLOCK,
    TPM2_ECC_CURVE,
    TPM2_EO,
    TPM2_HR,
    TPM2_NT,
    TPM2_SE,
    TPM2_SU,
    TPMA_NV,
    TPMA_OBJECT,
    TPMA_SESSION,
)
from tpm2_pytss.TSS2_Exception import TSS2_Exception
from tpm2_pytss.types import (
    TPM2B_DIGEST,
    TPM2B_ECC_POINT,
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_MAX_BUFFER,
    TPM2B_NV_PUBLIC,
    TPM2B_OPERAND,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPM2B_SENSITIVE_DATA,
    TPM2B_TEMPLATE,
    TPM2B_TIMEOUT,
    TPML_ALG,
    TPML_CC,
    TPML_DIGEST,
    TPML_DIGEST_VALUES,
    TPMS_NV_PUBLIC,
    TPMS_SENSITIVE_CREATE,
    TPMT_HA,
    TPMT_PUBLIC_PARMS,
    TPMT_RSA_DECRYPT,
    TPMT_SIG_SCHEME,
    TPMT_SIGNATURE,
    TPMT_SYM_DEF,
    TPMT_SYM_DEF_OBJECT,
    TPMT_TK_AUTH,
    TPMT_TK_VERIFIED,
)

AES128CFB = TPMT_SYM_DEF(algorithm=TPM2_ALG.AES)
AES128CFB.keyBits.aes = 128
AES128CFB.mode.aes = TPM2_ALG.CFB
SHA256 = TPM2_ALG.SHA256
NV_BASE = 0x01500100
PARENT_ATTRS = TPMA_OBJECT.DEFAULT_TPM2_TOOLS_CREATEPRIMARY_ATTRS
KEY_ATTRS = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
)


def _nv(index: int, attrs: int, size: int, nt: int = TPM2_NT.ORDINARY) -> TPM2B_NV_PUBLIC:
    attrs |= nt << TPMA_NV.TPM2_NT_SHIFT
    return TPM2B_NV_PUBLIC(
        nvPublic=TPMS_NV_PUBLIC(nvIndex=index, nameAlg=SHA256, attributes=attrs, dataSize=size)
    )


def _template(alg: str, attrs: int) -> TPM2B_TEMPLATE:
    return TPM2B_TEMPLATE(TPM2B_PUBLIC.parse(alg, objectAttributes=attrs).publicArea.marshal())


def all_commands(tcti_conf: str) -> list[str]:
    """Issue the commands; returns the ESAPI calls that raised something other than a TPM
    or ESYS error (a bug in this workload)."""
    kind, _, conf = tcti_conf.partition(":")
    e = ESAPI(TCTILdr(kind, conf))
    broken: list[str] = []

    def c(fn: Callable[..., Any], *a: Any, **k: Any) -> Any:
        try:
            return fn(*a, **k)
        except TSS2_Exception:
            return None
        except Exception as exc:
            broken.append(f"{fn.__name__}: {exc!r}")
            return None

    try:
        _workload(e, c)
    finally:
        e.close()
    return broken


def _workload(e: ESAPI, c: Callable[..., Any]) -> None:
    # -- capabilities, tests, random, clock ---------------------------------------------
    for cap, prop in (
        (TPM2_CAP.ALGS, 0),
        (TPM2_CAP.HANDLES, TPM2_HR.PERMANENT),
        (TPM2_CAP.COMMANDS, 0),
        (TPM2_CAP.PP_COMMANDS, 0),
        (TPM2_CAP.AUDIT_COMMANDS, 0),
        (TPM2_CAP.PCRS, 0),
        (TPM2_CAP.TPM_PROPERTIES, 0x100),
        (TPM2_CAP.PCR_PROPERTIES, 0),
        (TPM2_CAP.ECC_CURVES, 0),
    ):
        more = True
        while more:  # the whole list: the test compares it with what was issued
            got = c(e.get_capability, cap, prop, 64)
            if got is None:
                break
            more, data = got
            if cap == TPM2_CAP.COMMANDS and more:
                cmds = data.data.command
                prop = (int(cmds[len(cmds) - 1]) & 0xFFFF) + 1
            else:
                more = False
    c(e.self_test, True)
    c(e.incremental_self_test, TPML_ALG([TPM2_ALG.AES, SHA256]))
    c(e.get_test_result)
    c(e.get_random, 16)
    c(e.stir_random, b"entropy!")
    now = c(e.read_clock)
    if now is not None:
        c(e.clock_set, now.clockInfo.clock + 10_000)
    c(e.clock_rate_adjust, TPM2_CLOCK.MEDIUM_SLOWER)
    c(e.clock_rate_adjust, TPM2_CLOCK.MEDIUM_FASTER)
    c(e.ecc_parameters, TPM2_ECC_CURVE.NIST_P256)
    c(e.ec_ephemeral, TPM2_ECC_CURVE.NIST_P256)
    parms = TPMT_PUBLIC_PARMS(type=TPM2_ALG.ECC)
    parms.parameters.eccDetail.symmetric.algorithm = TPM2_ALG.NULL
    parms.parameters.eccDetail.scheme.scheme = TPM2_ALG.NULL
    parms.parameters.eccDetail.curveID = TPM2_ECC_CURVE.NIST_P256
    parms.parameters.eccDetail.kdf.scheme = TPM2_ALG.NULL
    c(e.test_parms, parms)
    c(e.vendor_tcg_test, b"vendor")

    # -- hashing and PCRs ----------------------------------------------------------------
    c(e.hash, b"abc", SHA256, ESYS_TR.OWNER)
    seq = c(e.hash_sequence_start, b"", SHA256)
    if seq is not None:
        c(e.sequence_update, seq, b"part one")
        c(e.sequence_complete, seq, b"part two", ESYS_TR.OWNER)
    seq = c(e.hash_sequence_start, b"", TPM2_ALG.NULL)  # an event sequence
    if seq is not None:
        c(e.event_sequence_complete, ESYS_TR.PCR16, seq, b"event")
    c(e.pcr_read, "sha256:0,1,16+sha1:16")
    ha = TPMT_HA(hashAlg=SHA256)
    ha.digest.sha256 = hashlib.sha256(b"m").digest()
    digests = TPML_DIGEST_VALUES([ha])
    c(e.pcr_extend, ESYS_TR.PCR16, digests)
    c(e.pcr_event, ESYS_TR.PCR16, b"an event")
    c(e.pcr_reset, ESYS_TR.PCR16)
    c(e.pcr_set_auth_value, ESYS_TR.PCR20, b"pcrauth")
    c(e.pcr_set_auth_policy, b"\0" * 32, SHA256, ESYS_TR.PCR20)

    # -- keys ------------------------------------------------------------------------------
    prim_pub = TPM2B_PUBLIC.parse("ecc256:aes128cfb", objectAttributes=PARENT_ATTRS)
    made = c(e.create_primary, TPM2B_SENSITIVE_CREATE(), prim_pub)
    if made is None:
        return
    prim = made[0]
    c(e.read_public, prim)
    ctx = c(e.context_save, prim)
    if ctx is not None:
        again = c(e.context_load, ctx)
        if again is not None:
            c(e.flush_context, again)
    persistent = c(e.evict_control, ESYS_TR.OWNER, prim, 0x81000010)
    if persistent is not None:
        c(e.evict_control, ESYS_TR.OWNER, persistent, 0x81000010)

    sign_attrs = KEY_ATTRS | TPMA_OBJECT.SIGN_ENCRYPT
    signed = c(
        e.create,
        prim,
        TPM2B_SENSITIVE_CREATE(),
        TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256", objectAttributes=sign_attrs),
    )
    signer = None
    if signed is not None:
        priv, pub, _, creation_hash, ticket = signed
        signer = c(e.load, prim, priv, pub)
    if signer is not None:
        scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.ECDSA)
        scheme.details.any.hashAlg = SHA256
        digest = hashlib.sha256(b"to sign").digest()
        hashed = c(e.hash, b"to sign", SHA256, ESYS_TR.OWNER)
        sig = c(e.sign, signer, digest, scheme, hashed[1] if hashed else None)
        if sig is not None:
            c(e.verify_signature, signer, digest, sig)
        c(e.certify, prim, signer, b"q", scheme)
        c(e.certify_creation, signer, signer, b"q", creation_hash, scheme, ticket)
        c(e.quote, signer, "sha256:0,1", b"nonce", scheme)
        c(e.get_time, signer, b"t", scheme)
        c(e.get_command_audit_digest, signer, b"a", scheme)
        c(e.certify_x509, signer, signer, TPM2B_MAX_BUFFER(b"\x30\x00"), scheme)
        c(e.commit, signer, TPM2B_ECC_POINT(), b"", b"")
        c(e.context_save, signer)
        c(e.object_change_auth, signer, prim, b"newauth")
        outside = c(e.read_public, signer)
        if outside is not None:
            ext = c(e.load_external, outside[0], None, ESYS_TR.NULL)
            if ext is not None:
                c(e.flush_context, ext)
            creds = c(e.make_credential, prim, TPM2B_DIGEST(b"credential"), outside[1])
            if creds is not None:
                c(e.activate_credential, signer, prim, creds[0], creds[1])
        audit = c(e.start_auth_session, ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.HMAC, AES128CFB, SHA256)
        if audit is not None:
            c(e.trsess_set_attributes, audit, TPMA_SESSION.AUDIT | TPMA_SESSION.CONTINUESESSION)
            c(e.get_random, 4, session1=audit)
            c(e.get_session_audit_digest, signer, audit, b"s", scheme)
            c(e.flush_context, audit)

    dh_attrs = KEY_ATTRS | TPMA_OBJECT.DECRYPT
    dh = c(
        e.create_loaded,
        prim,
        TPM2B_SENSITIVE_CREATE(),
        _template("ecc256:ecdh-sha256", dh_attrs),
    )
    if dh is not None:
        point = c(e.ecdh_key_gen, dh[0])
        if point is not None:
            c(e.ecdh_zgen, dh[0], point[1])
            c(e.zgen_2_phase, dh[0], point[1], point[1], TPM2_ALG.ECDH, 0)
        c(e.flush_context, dh[0])

    sym_attrs = KEY_ATTRS | TPMA_OBJECT.DECRYPT | TPMA_OBJECT.SIGN_ENCRYPT
    sym = c(e.create_loaded, prim, TPM2B_SENSITIVE_CREATE(), _template("aes128cfb", sym_attrs))
    if sym is not None:
        c(e.encrypt_decrypt, sym[0], False, TPM2_ALG.CFB, b"\0" * 16, b"plain text")
        c(e.encrypt_decrypt_2, sym[0], True, TPM2_ALG.CFB, b"\0" * 16, b"cipher text")
        c(e.flush_context, sym[0])

    mac = c(
        e.create_loaded,
        prim,
        TPM2B_SENSITIVE_CREATE(),
        _template("hmac:sha256", KEY_ATTRS | TPMA_OBJECT.SIGN_ENCRYPT),
    )
    if mac is not None:
        c(e.hmac, mac[0], b"data", SHA256)
        hs = c(e.hmac_start, mac[0], b"", SHA256)
        if hs is not None:
            c(e.sequence_complete, hs, b"data", ESYS_TR.NULL)
        c(e.flush_context, mac[0])

    seal_pub = TPM2B_PUBLIC.parse(
        "keyedhash", objectAttributes=KEY_ATTRS & ~TPMA_OBJECT.SENSITIVEDATAORIGIN
    )
    seal_in = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(data=TPM2B_SENSITIVE_DATA(b"sealed")))
    sealed = c(e.create, prim, seal_in, seal_pub)
    if sealed is not None:
        obj = c(e.load, prim, sealed[0], sealed[1])
        if obj is not None:
            c(e.unseal, obj)
            c(
                e.duplicate,
                obj,
                ESYS_TR.NONE,
                b"",
                TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.NULL),
                session1=ESYS_TR.PASSWORD,
            )
            c(
                e.rewrap,
                prim,
                prim,
                sealed[0],
                b"\0" * 34,
                TPM2B_ENCRYPTED_SECRET(),
                session1=ESYS_TR.PASSWORD,
            )
            c(
                e.import_,
                prim,
                b"",
                sealed[1],
                TPM2B_PRIVATE(b"\0" * 16),
                TPM2B_ENCRYPTED_SECRET(),
                TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.NULL),
            )
            c(e.flush_context, obj)

    rsa = c(
        e.create_loaded,
        prim,
        TPM2B_SENSITIVE_CREATE(),
        _template("rsa2048:null", KEY_ATTRS | TPMA_OBJECT.DECRYPT),
    )
    if rsa is not None:
        oaep = TPMT_RSA_DECRYPT(scheme=TPM2_ALG.OAEP)
        oaep.details.oaep.hashAlg = SHA256
        ct = c(e.rsa_encrypt, rsa[0], b"rsa secret", oaep)
        if ct is not None:
            c(e.rsa_decrypt, rsa[0], ct, oaep)
        c(e.flush_context, rsa[0])

    # -- NV --------------------------------------------------------------------------------
    rw = TPMA_NV.AUTHREAD | TPMA_NV.AUTHWRITE | TPMA_NV.OWNERREAD | TPMA_NV.OWNERWRITE
    ordinary = c(
        e.nv_define_space,
        b"nvpass",
        _nv(NV_BASE, rw | TPMA_NV.READ_STCLEAR | TPMA_NV.WRITEDEFINE | TPMA_NV.GLOBALLOCK, 32),
    )
    if ordinary is not None:
        c(e.nv_read_public, ordinary)
        c(e.nv_write, ordinary, b"nv data " * 4, 0)
        c(e.nv_read, ordinary, 32, 0)
        if signer is not None:
            c(e.nv_certify, signer, ordinary, b"n", scheme, 8, 0, auth_handle=ESYS_TR.OWNER)
        pol = c(e.start_auth_session, ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, AES128CFB, SHA256)
        if pol is not None:
            c(e.policy_nv, ESYS_TR.OWNER, ordinary, pol, TPM2B_OPERAND(b"nv"), TPM2_EO.EQ, 0)
            c(e.flush_context, pol)
        pol = c(e.start_auth_session, ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, AES128CFB, SHA256)
        if pol is not None:
            c(e.nv_change_auth, ordinary, b"other", session1=pol)
            c(e.flush_context, pol)
        c(e.nv_read_lock, ordinary)
        c(e.nv_write_lock, ordinary)
        c(e.nv_global_write_lock)
        c(e.nv_undefine_space, ordinary)
    counter = c(e.nv_define_space, b"", _nv(NV_BASE + 1, rw, 8, TPM2_NT.COUNTER))
    if counter is not None:
        c(e.nv_increment, counter)
        c(e.nv_undefine_space, counter)
    bits = c(e.nv_define_space, b"", _nv(NV_BASE + 2, rw, 8, TPM2_NT.BITS))
    if bits is not None:
        c(e.nv_set_bits, bits, 0x5)
        c(e.nv_undefine_space, bits)
    ext = c(e.nv_define_space, b"", _nv(NV_BASE + 3, rw, 32, TPM2_NT.EXTEND))
    if ext is not None:
        c(e.nv_extend, ext, b"extend me")
        c(e.nv_undefine_space, ext)
    pp = TPMA_NV.AUTHREAD | TPMA_NV.AUTHWRITE | TPMA_NV.PPREAD | TPMA_NV.PPWRITE
    pub = _nv(NV_BASE + 4, pp | TPMA_NV.PLATFORMCREATE | TPMA_NV.POLICY_DELETE, 8)
    pub.nvPublic.authPolicy = b"\0" * 32  # ESYS wants a policy on a POLICY_DELETE index
    special = c(e.nv_define_space, b"", pub, auth_handle=ESYS_TR.PLATFORM)
    if special is not None:
        pol = c(e.start_auth_session, ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, AES128CFB, SHA256)
        if pol is not None:
            c(e.nv_undefine_space_special, special, pol)

    # -- policy ------------------------------------------------------------------------------
    pol = c(e.start_auth_session, ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, AES128CFB, SHA256)
    if pol is not None:
        c(e.policy_pcr, pol, None, "sha256:0,1")
        c(e.policy_locality, pol, 1)
        c(e.policy_command_code, pol, TPM2_CC.Unseal)
        c(e.policy_auth_value, pol)
        c(e.policy_password, pol)
        c(e.policy_physical_presence, pol)
        c(e.policy_counter_timer, pol, TPM2B_OPERAND(b"\0" * 8), TPM2_EO.UNSIGNED_GE, 0)
        c(e.policy_nv_written, pol, False)
        c(e.policy_get_digest, pol)
        c(e.policy_or, pol, TPML_DIGEST([b"\1" * 32, b"\2" * 32]))
        c(e.policy_secret, ESYS_TR.OWNER, pol, b"", b"", b"", 0)
        c(e.policy_cp_hash, pol, b"\3" * 32)
        c(e.policy_restart, pol)
        c(e.policy_name_hash, pol, b"\4" * 32)
        c(e.policy_restart, pol)
        c(e.policy_template, pol, b"\5" * 32)
        c(e.policy_restart, pol)
        c(e.policy_duplication_select, pol, b"\0\x0b" + b"\6" * 32, b"\0\x0b" + b"\7" * 32, False)
        c(e.policy_restart, pol)
        if signer is not None:
            sig = TPMT_SIGNATURE(sigAlg=TPM2_ALG.ECDSA)
            sig.signature.ecdsa.hash = SHA256
            c(e.policy_signed, signer, pol, sig, b"", b"", b"", 0)
            c(
                e.policy_authorize,
                pol,
                b"\0" * 32,
                b"\0\x0b" + b"\1" * 32,
                TPMT_TK_VERIFIED(tag=0x8021, hierarchy=TPM2_RH_NULL),
            )
        c(
            e.policy_ticket,
            pol,
            TPM2B_TIMEOUT(b"\0" * 8),
            b"\0\x0b" + b"\1" * 32,
            TPMT_TK_AUTH(tag=0x8025, hierarchy=TPM2_RH_NULL),
        )
        c(e.policy_authorize_nv, ESYS_TR.OWNER, pol, auth_handle=ESYS_TR.OWNER)
        c(e.flush_context, pol)

    # -- hierarchies and administration (last: they change the TPM) ------------------------------
    c(e.set_primary_policy, ESYS_TR.OWNER, b"\0" * 32, SHA256)
    c(e.set_primary_policy, ESYS_TR.OWNER, b"", TPM2_ALG.NULL)
    c(e.hierarchy_change_auth, ESYS_TR.OWNER, b"ownerauth")
    c(e.tr_set_auth, ESYS_TR.OWNER, b"ownerauth")
    c(e.hierarchy_change_auth, ESYS_TR.OWNER, b"")
    c(e.tr_set_auth, ESYS_TR.OWNER, b"")
    c(e.set_command_code_audit_status, SHA256, TPML_CC([TPM2_CC.GetRandom]), TPML_CC([]))
    c(e.pp_commands, TPML_CC([TPM2_CC.Clear]), TPML_CC([]), session1=ESYS_TR.PASSWORD)
    c(e.set_algorithm_set, 0)
    c(e.dictionary_attack_parameters, 32, 600, 600)
    c(e.dictionary_attack_lock_reset)
    c(e.pcr_allocate, "sha256:all")
    c(e.change_pps)
    c(e.change_eps)
    c(e.clear_control, ESYS_TR.PLATFORM, False)
    c(e.clear, ESYS_TR.LOCKOUT)
    c(e.hierarchy_control, ESYS_TR.PLATFORM, ESYS_TR.ENDORSEMENT, False)
    c(e.shutdown, TPM2_SU.STATE)
    c(e.startup, TPM2_SU.STATE)


TPM2_RH_NULL = 0x40000007

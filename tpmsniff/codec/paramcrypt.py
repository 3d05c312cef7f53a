"""Session-key and parameter-key derivation (TPM 2.0 Part 1 §11.4.10, §19.6, §21) with
`cryptography`, to decrypt parameters of sessions whose keys an observer can compute.

An unsalted, unbound session has an empty sessionKey, so its parameter key depends only
on the nonces on the wire and the authValue of the authorised entity (empty by default,
or given with --auth). Encryption with such a session is decorative.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.kbkdf import KBKDFHMAC, CounterLocation, Mode

try:  # cryptography >= 47 keeps CFB among the "decrepit" modes
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB

HASHES: dict[int, Callable[[], hashes.HashAlgorithm]] = {
    0x0004: hashes.SHA1,
    0x000B: hashes.SHA256,
    0x000C: hashes.SHA384,
    0x000D: hashes.SHA512,
}
ALG_AES, ALG_XOR, ALG_NULL, MODE_CFB = 0x0006, 0x000A, 0x0010, 0x0043


def kdfa(
    hash_alg: int, key: bytes, label: bytes, context_u: bytes, context_v: bytes, bits: int
) -> bytes:
    """KDFa: SP 800-108 counter-mode HMAC with the TPM's fixed-input layout."""
    algo = HASHES[hash_alg]()
    kdf = KBKDFHMAC(
        algorithm=algo,
        mode=Mode.CounterMode,
        length=(bits + 7) // 8,
        rlen=4,
        llen=4,
        location=CounterLocation.BeforeFixed,
        label=label,
        context=context_u + context_v,
        fixed=None,
    )
    return kdf.derive(key)


def decrypt_param(
    *,
    sym_alg: int,
    key_bits: int,
    mode: int,
    hash_alg: int,
    session_value: bytes,
    nonce_newer: bytes,
    nonce_older: bytes,
    data: bytes,
) -> bytes | None:
    """Decrypt a TPM2B buffer encrypted with a session (CFB: AES; or XOR). None if unsupported."""
    if hash_alg not in HASHES or not data:
        return None
    if sym_alg == ALG_XOR:
        mask = kdfa(hash_alg, session_value, b"XOR", nonce_newer, nonce_older, 8 * len(data))
        return bytes(a ^ b for a, b in zip(data, mask, strict=True))
    if sym_alg == ALG_AES and mode == MODE_CFB and key_bits in (128, 192, 256):
        material = kdfa(hash_alg, session_value, b"CFB", nonce_newer, nonce_older, key_bits + 128)
        key, iv = material[: key_bits // 8], material[key_bits // 8 :]
        dec = Cipher(algorithms.AES(key), CFB(iv)).decryptor()
        return dec.update(data) + dec.finalize()
    return None


def digest(hash_alg: int, *parts: bytes) -> bytes:
    h = hashes.Hash(HASHES[hash_alg]())
    for p in parts:
        h.update(p)
    return h.finalize()


def hmac_digest(hash_alg: int, key: bytes, *parts: bytes) -> bytes:
    h = hmac.HMAC(key, HASHES[hash_alg]())
    for p in parts:
        h.update(p)
    return h.finalize()


def digest_size(hash_alg: int) -> int:
    return HASHES[hash_alg]().digest_size


def strip_auth(auth: bytes) -> bytes:
    """An authValue as the TPM uses it in keys: trailing zero octets removed (Part 1 §19.6.4.3)."""
    return auth.rstrip(b"\0")


def session_key(
    hash_alg: int, bind_auth: bytes, nonce_tpm: bytes, nonce_caller: bytes, salt: bytes = b""
) -> bytes:
    """sessionKey of an unsalted (salt=b"") session: empty if neither bound nor salted, else
    KDFa(authHash, bind.authValue ‖ salt, "ATH", nonceTPM, nonceCaller, digest bits)
    (Part 1 §19.6.8)."""
    key = strip_auth(bind_auth) + salt
    return kdfa(hash_alg, key, b"ATH", nonce_tpm, nonce_caller, 8 * digest_size(hash_alg))


def command_hmac(
    hash_alg: int,
    key: bytes,
    cc: int,
    names: list[bytes],
    cp_buffer: bytes,
    nonce_caller: bytes,
    nonce_tpm: bytes,
    attrs: int,
    extra_nonces: bytes = b"",
) -> bytes:
    """HMAC(sessionValue, cpHash ‖ nonceCaller ‖ nonceTPM ‖ [decrypt/encrypt nonceTPM] ‖
    sessionAttributes), cpHash = H(commandCode ‖ Names ‖ parameters) (Part 1 §19.6.5, §18.7)."""
    cp_hash = digest(hash_alg, cc.to_bytes(4, "big"), *names, cp_buffer)
    return hmac_digest(
        hash_alg, key, cp_hash, nonce_caller, nonce_tpm, extra_nonces, bytes([attrs & 0xFF])
    )


def response_hmac(
    hash_alg: int,
    key: bytes,
    cc: int,
    rp_buffer: bytes,
    nonce_tpm: bytes,
    nonce_caller: bytes,
    attrs: int,
) -> bytes:
    """HMAC(sessionValue, rpHash ‖ nonceTPM ‖ nonceCaller ‖ sessionAttributes),
    rpHash = H(responseCode(0) ‖ commandCode ‖ parameters) (Part 1 §19.6.5)."""
    rp_hash = digest(hash_alg, b"\0\0\0\0", cc.to_bytes(4, "big"), rp_buffer)
    return hmac_digest(hash_alg, key, rp_hash, nonce_tpm, nonce_caller, bytes([attrs & 0xFF]))

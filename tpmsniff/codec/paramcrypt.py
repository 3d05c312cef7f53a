"""Session-key and parameter-key derivation (TPM 2.0 Part 1 §11.4.10, §19.6, §21) with
`cryptography`, to decrypt parameters of sessions whose keys an observer can compute.

An unsalted, unbound session has an empty sessionKey, so its parameter key depends only
on the nonces on the wire and the authValue of the authorised entity (empty by default,
or given with --auth). Encryption with such a session is decorative.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
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

"""Parameter-encryption key derivation (codec/paramcrypt.py) against a known answer."""

from __future__ import annotations

from tpmsniff.codec.paramcrypt import kdfa, session_key


def test_kdfa_known_answer():
    """KDFa(SHA256) against a value computed by hand from SP 800-108 (counter mode,
    HMAC-SHA256, [i]4 ‖ Label ‖ 00 ‖ Context ‖ [L]4), independent of `cryptography`."""
    import hashlib
    import hmac

    key, u, v = b"k" * 5, b"\x01" * 16, b"\x02" * 16
    fixed = b"ATH\0" + u + v + (256).to_bytes(4, "big")
    want = hmac.new(key, (1).to_bytes(4, "big") + fixed, hashlib.sha256).digest()
    assert kdfa(0x000B, key, b"ATH", u, v, 256) == want
    assert session_key(0x000B, key + b"\0\0", u, v) == want  # trailing zeros stripped

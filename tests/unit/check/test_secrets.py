"""Secrets are shown by label, never by value."""

from __future__ import annotations

from tpmsniff.check.secrets import Secret


def test_secret_label_hides_the_value():
    s = Secret(b"hunter2-disk-key", 3)
    assert s.label.startswith("secret #3 (sha256:") and "hunter2" not in repr(s)
    assert s.fingerprint == __import__("hashlib").sha256(b"hunter2-disk-key").hexdigest()[:6]

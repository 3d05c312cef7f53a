"""What an observer can read and learn (codec/authvalues.py), on the ESAPI captures
recorded from real runs (tests/data/esapi-*.pcapng): sensitive fields that crossed in
clear or decrypted, password authValues, and the book of candidates they feed."""

from __future__ import annotations

from helpers.recorded import cap, frames
from helpers.scenarios import OBJECT_AUTH, PRIMARY_AUTH, SECRET

from tpmsniff.codec.authvalues import MAX_VALUES, AuthBook, readable_values
from tpmsniff.model import Direction


def readable(kind: str) -> dict[str, tuple[bytes, str]]:
    """field -> (value, how) over every message of the capture (the last one wins)."""
    out: dict[str, tuple[bytes, str]] = {}
    for f in frames(cap(kind)):
        if f.tpm is not None:
            for r in readable_values(f.tpm, f.raw, f.direction is Direction.COMMAND):
                out[r.field] = (r.value, r.how)
    return out


def test_values_that_crossed_in_clear_are_readable():
    got = readable("password")
    assert got["Create inSensitive.data"] == (SECRET, "in clear")
    assert got["Unseal outData"] == (SECRET, "in clear")
    got = readable("bound-learned")
    assert got["CreatePrimary inSensitive.userAuth"] == (PRIMARY_AUTH, "in clear")


def test_decrypted_values_say_how():
    value, how = readable("bound")["Unseal outData"]
    assert value == SECRET and how == "decrypted (proof=hmac)"


def test_policy_password_auth_value_is_readable():
    got = readable("policy-password")
    assert got["session[0] PolicyPassword authValue"] == (OBJECT_AUTH, "in clear")


def test_salted_session_hides_every_value():
    got = readable("salted")
    assert not any(v == SECRET for v, _ in got.values())
    assert "Unseal outData" not in got and "Create inSensitive.data" not in got


def test_book_candidates_in_order_without_repeats():
    book = AuthBook({0x80000000: b"given"})
    book.learn(b"old", "CreatePrimary userAuth", 0x80000000, b"name")
    book.learn(b"new", "ObjectChangeAuth newAuth", 0x80000000, None)
    book.learn(b"given", "learned", 0x80000000, None)
    assert book.candidates(0x80000000, b"name") == [
        (b"given", "--auth"),
        (b"new", "ObjectChangeAuth newAuth"),
        (b"old", "CreatePrimary userAuth"),
        (b"", "empty"),
    ]
    assert book.candidates(None, None) == [(b"", "empty")]  # empty is always a candidate


def test_book_is_bounded_and_forgets():
    book = AuthBook()
    for i in range(MAX_VALUES + 5):
        book.learn(bytes([i]), "learned", 1, None)
    assert len(book.by_handle[1]) == MAX_VALUES
    assert book.by_handle[1][0][0] == bytes([MAX_VALUES + 4])  # newest first
    book.set_handle(b"changed", "HierarchyChangeAuth newAuth", 1)
    assert book.candidates(1, None) == [(b"changed", "HierarchyChangeAuth newAuth"), (b"", "empty")]
    book.forget(1)
    assert book.candidates(1, None) == [(b"", "empty")]

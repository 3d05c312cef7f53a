"""Session tracking and grading (codec/sessions.py) on bytes recorded from real runs
(tpm2-pytss ESAPI clients, swtpm, tpmsniff): session keys derived from learned or given
authValues and proven by HMAC, salted sessions never derivable.

The captures in tests/data/esapi-*.pcapng were recorded with tests/helpers/scenarios.py
through a tpmsniff daemon; the client sealed and unsealed scenarios.SECRET in each.
"""

from __future__ import annotations

from helpers.recorded import cap, frames, last
from helpers.scenarios import OBJECT_AUTH, PRIMARY_AUTH, SECRET

from tpmsniff.codec.annotate import Annotator
from tpmsniff.inputs import frames_from_input
from tpmsniff.model import Direction, Verdict


def test_bound_to_empty_auth_primary_is_weak_and_proven():
    fs = frames(cap("bound"))
    create = last(fs, "Create", Direction.COMMAND)
    unseal = last(fs, "Unseal", Direction.RESPONSE)
    for f in (create, unseal):
        assert f.verdict is Verdict.WEAK and f.tpm.param.proof == "hmac"
        assert "bound to 0x80000000, empty authValue" in f.tpm.param.strength
    # known answer: ESAPI sealed SECRET and got it back; tpmsniff recovers the same bytes
    assert unseal.tpm.param.recovered == SECRET
    assert SECRET in create.tpm.param.recovered and SECRET not in create.raw


def test_bound_to_primary_whose_auth_crossed_in_clear_uses_the_learned_value():
    fs = frames(cap("bound-learned"))
    unseal = last(fs, "Unseal", Direction.RESPONSE)
    assert unseal.verdict is Verdict.WEAK and unseal.tpm.param.proof == "hmac"
    assert "CreatePrimary userAuth" in unseal.tpm.param.strength
    assert unseal.tpm.param.recovered == SECRET
    # and without learning, the key would not be derivable: the HMAC rejects empty
    ann = Annotator()
    ann.sessions.book.learn = lambda *a, **k: None  # type: ignore[method-assign]
    blind = [f for f in frames_from_input(cap("bound-learned"), ann) if f is not None]
    u = last(blind, "Unseal", Direction.RESPONSE)
    assert u.verdict is Verdict.ENCRYPTED
    assert u.tpm.param.strength.endswith("bound to 0x80000000, authValue never seen")


def test_auth_given_on_the_command_line_is_a_candidate():
    ann = Annotator({0x80000000: PRIMARY_AUTH})
    ann.sessions.book.learn = lambda *a, **k: None  # type: ignore[method-assign]
    u = last(list(frames_from_input(cap("bound-learned"), ann)), "Unseal", Direction.RESPONSE)
    assert u.verdict is Verdict.WEAK and u.tpm.param.proof == "hmac"
    assert "--auth" in u.tpm.param.strength and u.tpm.param.recovered == SECRET


def test_policy_password_hmac_field_is_the_auth_value():
    fs = frames(cap("policy-password"))
    cmd = [f for f in fs if f.name == "Unseal" and f.direction is Direction.COMMAND][-1]
    assert cmd.tpm.sessions[0].facts.policy == "password"
    assert cmd.tpm.sessions[0].auth == OBJECT_AUTH  # in clear, in the HMAC field
    rsp = last(fs, "Unseal", Direction.RESPONSE)
    # no HMAC to check, but the key follows from wire data and the learned authValue;
    # the TPM includes the authValue in the parameter key (ESAPI 4.x does not, and
    # gets garbage back: what the TPM sent is SECRET)
    assert rsp.verdict is Verdict.WEAK and rsp.tpm.param.proof == "none"
    assert rsp.tpm.param.recovered == SECRET


def test_salted_session_is_never_derivable():
    fs = frames(cap("salted"))
    for f in (last(fs, "Create", Direction.COMMAND), last(fs, "Unseal", Direction.RESPONSE)):
        assert f.verdict is Verdict.ENCRYPTED
        assert f.tpm.param.strength == "AES-128-CFB, salted by primary key in owner hierarchy"
        assert f.tpm.param.recovered is None

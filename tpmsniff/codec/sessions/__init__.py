"""Session tracking and encryption-strength verdicts (docs/verdicts.md), split by job:
`table` (live sessions), `objects` (key provenance), `handles` (which handles a command
authorises, `--auth`), `keys` (key candidates), `proof` (HMAC checks), `grading`,
`decrypt`, `learning`, and `tracker` (the entry point that runs them in order).

Sessions are learned from StartAuthSession (type, salted/bound, symmetric, authHash) and
end on FlushContext or on a successful response to a command that cleared
continueSession. Handles are global on a TPM, so one tracker serves every connection to
one upstream TPM; a session first seen mid-stream is of "unknown" origin. The tracker
also remembers where loaded keys came from, to say what a salt key is.

Derivation (TPM 2.0 Part 1 §19.6, §21): for every session whose salt is absent, the
sessionKey is computed from the bind entity's authValue candidates (empty, --auth,
learned from the capture: `AuthBook`), and sessionValue = sessionKey ‖ authValue of the
authorised entity, except for a session authorising its own bind entity, a session that
authorises no handle (an extra decrypt/encrypt session), and a policy session before
PolicyAuthValue. A candidate is kept when the session's HMAC verifies with it
(proof=hmac); with no HMAC to check (PolicyPassword, names unknown) the first candidate
is used (proof=none) unless a check of this session already failed with every candidate.
"""

from .handles import auth_handle_count, parse_auth
from .tracker import SessionTracker

__all__ = ["SessionTracker", "auth_handle_count", "parse_auth"]

"""Exit codes of every front end (docs/usage.md, `--help`, the man page): the daemon uses
all five; `decode` 0 and 2; `check` 0, 1 and 2."""

from __future__ import annotations

EXIT_OK = 0
EXIT_VIOLATION = 1  # a live check (--secret, --require-encrypted) found a violation
EXIT_USAGE = 2
EXIT_STARTUP = 3  # cannot start: listen, upstream, or a capture that cannot be opened/written
EXIT_CAPTURE_LOST = 4  # relayed to the end, but (part of) the capture or its outputs was lost

_RANK = {EXIT_OK: 0, EXIT_CAPTURE_LOST: 1, EXIT_VIOLATION: 2}


def combine(*codes: int) -> int:
    """The code a run ends with: a violation a check saw wins, then a lost capture; any
    other code (a worker killed by a signal, a crash) counts as a lost capture."""
    worst = EXIT_OK
    for c in codes:
        c = c if c in _RANK else EXIT_CAPTURE_LOST
        if _RANK[c] > _RANK[worst]:
            worst = c
    return worst

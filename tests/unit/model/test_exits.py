"""How exit codes combine (model/exits.py): the worst wins, a crash counts as 4."""

from __future__ import annotations

from tpmsniff.model.exits import combine


def test_exit_codes_combine():
    assert combine() == 0 and combine(0, 0) == 0
    assert combine(0, 4) == 4 and combine(4, 1) == 1 and combine(1, 0) == 1
    assert combine(-9) == 4 and combine(247) == 4 and combine(3) == 4

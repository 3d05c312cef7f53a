"""The error for an input that cannot be read at all (its own module: every reader, the
bus readers included, raises it, and detect.py imports the bus readers)."""

from __future__ import annotations


class InputError(Exception):
    """An input that cannot be read at all: exit 2, one line naming the file."""

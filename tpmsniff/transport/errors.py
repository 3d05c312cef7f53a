"""The one error the daemon's start-up raises: its message is the line the user sees."""

from __future__ import annotations


class StartupError(Exception):
    """The daemon cannot start: the message is the one line the user sees."""

"""Command front ends: the daemon, `decode`, `check`, and the man page generator."""

from .daemon import main

__all__ = ["main"]

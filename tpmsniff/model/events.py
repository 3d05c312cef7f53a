"""What the transport and the offline readers hand to the pipeline: framed messages and
connections, before any decoding.

These are the records that cross from the relay process to the capture worker, so they
stay plain frozen data.
"""

from __future__ import annotations

from dataclasses import dataclass

from .frame import Channel, Direction, Framing


@dataclass(frozen=True, slots=True)
class Message:
    """One framed unit of a byte stream."""

    raw: bytes
    framing: Framing
    prefix: int = 0
    locality: int | None = None
    note: str | None = None  # why it is UNFRAMED


@dataclass(frozen=True, slots=True)
class Event:
    """A framed message ready for decoding."""

    channel: Channel
    direction: Direction
    message: Message
    ctrl_cmd: int | None = None  # control responses: the request's CMD_* code


@dataclass(frozen=True, slots=True)
class ConnInfo:
    """A proxied (or replayed) connection as sinks see it."""

    conn: int
    channel: Channel
    peer: str  # client description, e.g. "unix:/run/x.sock" or "127.0.0.1:40112"
    upstream: str
    ts: float

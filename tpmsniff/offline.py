"""Frames from files: the same channel machines and annotator as the live relay.

A capture is replayed stream by stream into `DataChannel`/`CtrlChannel` exactly as the
relay would have seen the bytes, so framing, pairing, sessions and verdicts are computed
by the same code. Inputs here: tpmsniff pcapng. (More formats: issue #5.)
"""

from __future__ import annotations

from collections.abc import Iterator

from .annotate import Annotator
from .channels import CtrlChannel, DataChannel
from .model import Frame
from .pcapread import CaptureError, tcp_segments
from .sinks.pcapng import CTRL_PORT


class InputError(Exception):
    """An input that cannot be read at all: exit 2 with a one-line message."""


def frames_from_capture(path: str, annotator: Annotator | None = None) -> Iterator[Frame]:
    ann = annotator or Annotator()
    streams: dict[tuple[bytes, int, int], tuple[int, DataChannel | CtrlChannel]] = {}
    try:
        for seg in tcp_segments(path):
            key = (*seg.stream, seg.server_port)
            if key not in streams:
                machine = CtrlChannel() if seg.server_port == CTRL_PORT else DataChannel()
                streams[key] = (len(streams) + 1, machine)
            conn, machine = streams[key]
            if seg.to_server:
                _, events = machine.from_client(seg.payload)
            else:
                _, events = machine.from_server(seg.payload)
            for ev in events:
                yield ann.annotate(conn, seg.packet.ts, ev, seg.packet.number)
    except CaptureError as exc:
        raise InputError(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None


def frames_from_input(path: str, annotator: Annotator | None = None) -> Iterator[Frame]:
    """Frames of one input file, whatever its format."""
    return frames_from_capture(path, annotator)

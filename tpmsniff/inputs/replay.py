"""The one replay driver: frames of offline inputs (or of a finished live run) fed to a
`FrameConsumer`, the way the pipeline feeds sinks live.

`decode`, `check` and the pytest plugin all go through `replay_frames`, so a sink or a
check behaves the same on a file as on the wire.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import structlog

from ..codec.annotate import Annotator
from ..codec.tis import BusWarning
from ..model import Channel, Frame, FrameConsumer
from .bus import BUS_FORMATS, bus_frames
from .capture import Partial, frames_from_capture
from .detect import FORMATS, InputError, detect_format
from .swtpmlog import frames_from_log

log = structlog.get_logger("tpmsniff.inputs")


@dataclass(frozen=True, slots=True)
class PartialInput:
    """An input that could not be read completely: where it broke and why."""

    file: str
    offset: int | None
    reason: str
    anomaly: bool = False  # a bus capture read whole, whose transactions do not add up

    def text(self) -> str:
        if self.anomaly:
            return f"{self.file}: bus transactions do not add up: {self.reason}"
        at = f" at byte {self.offset}" if self.offset is not None else ""
        return f"{self.file}: read only partly, stopped{at}: {self.reason}"


def frames_from_input(
    path: str,
    annotator: Annotator | None = None,
    fmt: str = "auto",
    partial: list[PartialInput] | None = None,
) -> Iterator[Frame]:
    """Frames of one input. Raises InputError if nothing can be read. If the input breaks
    part-way, the frames before the break are kept and the break is appended to
    `partial` (callers that must fail closed, like `check`, pass a list); without a list,
    it is logged as a warning."""
    ann = annotator or Annotator()
    if fmt == "auto":
        fmt = detect_format(path)
    elif fmt not in FORMATS:
        raise InputError(f"{path}: unknown input format {fmt}")
    if fmt in BUS_FORMATS:
        yield from _bus(path, fmt, ann, partial)
        return
    if fmt == "swtpm-log":
        cut: int | None = None
        try:
            for f in frames_from_log(path, ann):
                if (
                    cut is None
                    and f.channel is Channel.TPM
                    and (f.error or "").startswith("swtpm logged")
                ):
                    cut = f.seq  # a TPM message the log holds only in part
                yield f
        except OSError as exc:
            raise InputError(f"{path}: {exc.strerror}") from None
        if cut is not None:
            why = f"TPM message {cut} is logged only in part"
            if partial is not None:
                partial.append(PartialInput(path, None, why))
            else:
                log.warning("input is partly unreadable", file=path, error=why)
        return
    n = 0
    try:
        for f in frames_from_capture(path, fmt, ann):
            n += 1
            yield f
    except Partial as exc:
        if n == 0:
            raise InputError(str(exc)) from None
        if partial is not None:
            partial.append(PartialInput(path, exc.offset, str(exc).removeprefix(f"{path}: ")))
        else:
            log.warning(
                "input is partly unreadable; kept what came before", file=path, error=str(exc)
            )
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror}") from None


def _bus(
    path: str, fmt: str, ann: Annotator, partial: list[PartialInput] | None
) -> Iterator[Frame]:
    """A bus capture: every anomaly (a message that never completes, a response with no
    command, a locality switch mid-message, a transfer that is no TPM transaction) makes
    the input partial, so `check` fails closed on it as on a damaged pcapng."""
    warnings: list[BusWarning] = []
    n = 0
    try:
        for f in bus_frames(path, fmt, ann, warnings):
            n += 1
            yield f
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror}") from None
    except UnicodeError as exc:
        raise InputError(f"{path}: not text: {exc}") from None
    if n == 0 and not warnings:
        raise InputError(f"{path}: no TPM message in this {fmt} capture")
    for w in warnings:
        if partial is not None:
            partial.append(PartialInput(path, None, w.line(), anomaly=True))
        else:
            log.warning("bus capture anomaly", file=path, error=w.line())


@dataclass(slots=True)
class Replayed:
    """What a replay fed: message count and the connection ids it used."""

    frames: int = 0
    conns: list[int] = field(default_factory=list)


def replay_frames(frames: Iterable[Frame], consumer: FrameConsumer, conn_base: int = 0) -> Replayed:
    """Feed frames to `consumer`, renumbering connections by `conn_base` (so several inputs
    share one capture without clashing), and close every connection at the end."""
    done = Replayed()
    seen: set[int] = set()
    last_ts = 0.0
    for f in frames:
        if conn_base:
            f = replace(f, conn=f.conn + conn_base)
        if f.conn not in seen:
            seen.add(f.conn)
            done.conns.append(f.conn)
        done.frames += 1
        last_ts = f.ts
        consumer.frame(f)
    for conn in done.conns:
        consumer.conn_close(conn, last_ts)
    return done


def replay(
    paths: Sequence[str],
    consumer: FrameConsumer,
    auth: dict[int, bytes] | None = None,
    fmt: str = "auto",
    partial: list[PartialInput] | None = None,
    errors: list[InputError] | None = None,
) -> int:
    """Replay each input in turn (sessions are tracked per input); returns the frame count.

    Raises InputError for an input that cannot be read at all, unless `errors` is given:
    then the error is appended there and the next input is replayed. Before each input
    the consumer gets `control("input PATH")`, so it can say which file a frame came from."""
    base = 0
    frames = 0
    for path in paths:
        consumer.control(f"input {path}")
        try:
            done = replay_frames(
                frames_from_input(path, Annotator(auth), fmt, partial), consumer, base
            )
        except InputError as exc:
            if errors is None:
                raise
            errors.append(exc)
            continue
        frames += done.frames
        base = max([base, *done.conns])
    return frames

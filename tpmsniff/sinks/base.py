"""No-op defaults for `FrameConsumer`, so a sink implements only the calls it needs."""

from __future__ import annotations

from ..model import ConnInfo, Frame


class BaseSink:
    exit_code = 0  # non-zero: this sink says the run failed (e.g. a live check)

    def conn_open(self, info: ConnInfo) -> None:
        pass

    def frame(self, f: Frame) -> None:
        pass

    def conn_close(self, conn: int, ts: float) -> None:
        pass

    def control(self, what: str) -> None:
        pass

    def close(self) -> None:
        pass

"""Listen/upstream address syntax: `PATH`, `unix:PATH`, `tcp:HOST:PORT`, `HOST:PORT`."""

from __future__ import annotations

from dataclasses import dataclass


class AddressError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Address:
    kind: str  # "unix" | "tcp"
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"

    def companion(self) -> Address:
        """The swtpm TCTI's control endpoint for this data endpoint: port+1 or PATH.ctrl."""
        if self.kind == "unix":
            return Address("unix", path=self.path + ".ctrl")
        if self.port >= 65535:
            raise AddressError(f"{self}: no port above it for the control channel")
        return Address("tcp", host=self.host, port=self.port + 1)


def parse_address(text: str) -> Address:
    if not text:
        raise AddressError("empty address")
    if text.startswith("unix:"):
        path = text[5:]
        if not path:
            raise AddressError(f"{text!r}: missing path")
        return Address("unix", path=path)
    rest = text[4:] if text.startswith("tcp:") else text
    if text.startswith("tcp:") or (":" in rest and "/" not in rest):
        host, sep, port = rest.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise AddressError(f"{text!r}: expected HOST:PORT with a port from 1 to 65535")
        host = host.strip("[]") or "127.0.0.1"
        return Address("tcp", host=host, port=int(port))
    return Address("unix", path=text)

"""`--require-encrypted NAME[:direction]`: a command whose parameter must be ENCRYPTED."""

from __future__ import annotations

from dataclasses import dataclass

from tpm2_pytss.constants import TPM2_CC

from ..codec.tpm import command_layout, response_layout
from ..model import Direction


@dataclass(frozen=True, slots=True)
class Requirement:
    cc: int
    name: str
    direction: Direction

    @classmethod
    def parse(cls, text: str) -> Requirement:
        name, _, d = text.partition(":")
        try:
            cc = int(TPM2_CC.parse(name.lower().replace("_", "")))
        except Exception:
            matches = [n for n in dir(TPM2_CC) if n.lower() == name.lower()]
            if not matches:
                raise ValueError(f"unknown TPM command {name!r}") from None
            cc = int(getattr(TPM2_CC, matches[0]))
        canon = TPM2_CC.to_string(cc).removeprefix("TPM2_CC.")
        if d:
            if d not in ("command", "response"):
                raise ValueError(f"{text!r}: direction is command or response")
            return cls(cc, canon, Direction(d))
        cmd = command_layout(cc)
        if cmd is not None and cmd[1] is not None:
            return cls(cc, canon, Direction.COMMAND)
        rsp = response_layout(cc)
        if rsp is not None and rsp[1] is not None:
            return cls(cc, canon, Direction.RESPONSE)
        raise ValueError(f"{canon} has no encryptable parameter in either direction")

    def __str__(self) -> str:
        return f"{self.name}:{self.direction}"

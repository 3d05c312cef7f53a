"""`--sensitive`: the zero-configuration policy (docs/verdicts.md).

Every sensitive value an observer of the bus could read is a finding that names the
field, without being told any secret: Unseal outData; the userAuth and data of
Create/CreatePrimary/CreateLoaded inSensitive; newAuth of HierarchyChangeAuth/
ObjectChangeAuth/NV_ChangeAuth; NV_DefineSpace auth; LoadExternal inPrivate;
Import/Duplicate encryptionKey; non-empty password authValues (password sessions and
PolicyPassword). NV data and GetRandom output only when asked (`nv`, `random`). Empty
values are not findings; a sensitive parameter whose encryption cannot be judged
(UNKNOWN: the session started before the capture) is one, since the check cannot tell.
"""

from __future__ import annotations

from dataclasses import dataclass

from tpm2_pytss.constants import TPM2_CC

from ..codec.authvalues import OPTIONAL_FIRST, SENSITIVE_FIRST, readable_values
from ..codec.tpm import cc_name
from ..codec.wellknown import well_known
from ..model import Channel, Direction, Frame, Verdict
from .findings import Finding

_CREATES = (TPM2_CC.CreatePrimary, TPM2_CC.Create, TPM2_CC.CreateLoaded)


@dataclass(frozen=True, slots=True)
class SensitivePolicy:
    nv: bool = False  # NV_Write data / NV_Read data are sensitive too
    random: bool = False  # GetRandom output is sensitive too

    def _wanted(self, option: str | None) -> bool:
        return (
            option is None or (option == "nv" and self.nv) or (option == "random" and self.random)
        )

    def findings(self, f: Frame) -> list[Finding]:
        t = f.tpm
        if t is None or f.channel is not Channel.TPM or t.header_only or t.cc is None:
            return []
        command = f.direction is Direction.COMMAND
        out = [
            Finding(
                "sensitive",
                f"{r.field}{_named(r.value)} readable by an observer ({r.how})",
                field=r.field,
            )
            for r in readable_values(t, f.message, command)
            if self._wanted(r.option)
        ]
        p = t.param
        if p.verdict is Verdict.UNKNOWN and p.size:
            key = (t.cc, command)
            opt = OPTIONAL_FIRST.get(key, (None, ""))[0]
            if (
                key in SENSITIVE_FIRST
                or (command and t.cc in _CREATES)
                or (opt is not None and self._wanted(opt))
            ):
                out.append(
                    Finding(
                        "sensitive",
                        f"{cc_name(t.cc)} sensitive parameter: encryption cannot be judged "
                        f"({p.strength})",
                        field=f"parameter[0] {p.type_name}",
                    )
                )
        return out


def _named(value: bytes) -> str:
    """` (BitLocker VMK)` for a well-known secret; never its bytes."""
    name = well_known(value)
    return f" ({name})" if name else ""

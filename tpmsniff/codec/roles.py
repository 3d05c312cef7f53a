"""Which protocol a connection speaks, from its first read (docs/usage.md, "Roles").

One listen address can serve QEMU's control channel, raw TPM and MS-simulator data
channels, and plain control clients (swtpm_ioctl), so `--listen/--upstream` is the same
whatever is in front of tpmsniff.
"""

from __future__ import annotations

from .ctrl import CMD_NAMES
from .framing import VALID_TAGS

SET_DATAFD = b"\x00\x00\x00\x10"
MSSIM_SEND = b"\x00\x00\x00\x08"


def detect_role(first: bytes, fds: list[int], mode: str, unix: bool) -> str:
    """Return "qemu", "data" or "ctrl" for a connection whose first read was `first`.

    - `--mode qemu` / `--mode swtpm` force "qemu" / "data".
    - An fd, or the 4 bytes of CMD_SET_DATAFD, mean QEMU (it always starts so).
    - A TPM 1.2/2.0 tag means a raw TPM data channel.
    - `00000008` followed by more bytes is an MS-simulator TPM_SEND_COMMAND header; alone
      (exactly 4 bytes) it is CMD_HASH_END. This is the one ambiguous case: the mssim TCTI
      writes its 9-byte header in one write, so on a local socket it arrives whole.
    - Any other known CMD_* code (`000000xx`) is a plain control client.
    - Anything else is relayed as data (and recorded as unframed if it is not TPM).
    """
    if mode == "qemu":
        return "qemu"
    if mode == "swtpm":
        return "data"
    if fds or (unix and first[:4] == SET_DATAFD):
        return "qemu"
    if len(first) >= 2 and int.from_bytes(first[:2], "big") in VALID_TAGS:
        return "data"
    if first[:4] == MSSIM_SEND and len(first) > 4:
        return "data"
    if len(first) >= 4 and first[:3] == b"\0\0\0" and first[3] in CMD_NAMES:
        return "ctrl"
    return "data"

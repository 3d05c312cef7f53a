"""Well-known secrets named by their first bytes, so a summary line, a pcapng comment and a
--sensitive finding can say *what* crossed in clear without printing it (no heavy imports:
the text renderer uses it)."""

from __future__ import annotations

# Well-known secrets by their first bytes: what people sniffing a TPM bus look for.
# BitLocker's VMK: a FVE key entry (size 0x2c, version 1, type 3, AES-256 0x2003/0x2000).
WELL_KNOWN = ((bytes.fromhex("2c0000000100000003200000"), "BitLocker VMK"),)


def well_known(data: bytes | None) -> str | None:
    """The name of a well-known secret `data` starts with (an Unseal's outData), or None."""
    for head, name in WELL_KNOWN:
        if data and data.startswith(head):
            return name
    return None

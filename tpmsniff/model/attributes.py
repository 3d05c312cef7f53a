"""TPMA_SESSION bit names, shown by every sink (pure data: the sinks that show them must
not import the decoder, which is slow to import, before they open their files)."""

from __future__ import annotations

SESSION_ATTRIBUTES = (
    (0x01, "cont"),
    (0x02, "auditexcl"),
    (0x04, "auditreset"),
    (0x20, "decrypt"),
    (0x40, "encrypt"),
    (0x80, "audit"),
)


def attrs_text(attrs: int) -> str:
    """TPMA_SESSION as text, e.g. "cont|decrypt" ("-" for none)."""
    names = [n for bit, n in SESSION_ATTRIBUTES if attrs & bit]
    return "|".join(names) if names else "-"

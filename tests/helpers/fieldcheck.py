"""The exactness self-check of decoded fields (issue 12): for a TPM 2.0 message,

- the field tree explains every byte: top-level fields tile the message from 0 to its
  end, children tile their parent, every integer leaf equals its bytes, every buffer leaf
  equals its bytes (TPM2B: with the size prefix);
- pytss re-marshals the unmarshalled handles and parameters to exactly the message bytes.

`problems(frame)` lists what is wrong (empty: exact). `check_frames` asserts it for all.
"""

from __future__ import annotations

from collections.abc import Iterable

from tpm2_pytss import command_parser as cp

from tpmsniff.inputs import frames_from_input
from tpmsniff.model import Channel, Field, Frame, Kind

TPM2_TAGS = (0x8001, 0x8002)


def _tile(parent: str, start: int, end: int, kids: Iterable[Field], out: list[str]) -> None:
    at = start
    for k in kids:
        if k.offset != at:
            out.append(f"{parent}.{k.name}: at {k.offset}, expected {at}")
        at = k.offset + k.size
    if at != end:
        out.append(f"{parent}: fields end at {at}, message part ends at {end}")


def _leaf(path: str, f: Field, msg: bytes, out: list[str]) -> None:
    raw = msg[f.offset : f.offset + f.size]
    if len(raw) != f.size:
        out.append(f"{path}: runs past the message end")
        return
    if f.kind in (Kind.INT, Kind.BITS):
        signed = f.type in ("TPM2_CLOCK", "INT8", "INT32")
        if int.from_bytes(raw, "big", signed=signed) != f.value:
            out.append(f"{path}: value {f.value!r} != bytes {raw.hex()}")
    elif f.kind is Kind.BYTES:
        assert isinstance(f.value, bytes)
        if f.type.startswith("TPM2B_"):
            if int.from_bytes(raw[:2], "big") != len(f.value) or raw[2:] != f.value:
                out.append(f"{path}: TPM2B contents differ from bytes")
        elif raw != f.value:
            out.append(f"{path}: buffer differs from bytes")


def _walk(path: str, f: Field, msg: bytes, out: list[str], plain: bool = False) -> None:
    """`plain`: inside a parameter tpmsniff decrypted: the layout must tile, but the values
    are the plaintext, not the wire bytes (only the TPM2B size in clear is compared)."""
    p = f"{path}.{f.name}" if path else f.name
    if f.recovered:
        if int.from_bytes(msg[f.offset : f.offset + 2], "big") != f.size - 2:
            out.append(f"{p}: recovered plaintext size differs from the wire")
        plain = True
    if f.kind in (Kind.STRUCT, Kind.LIST):
        _tile(p, f.offset, f.offset + f.size, f.children, out)
        for c in f.children:
            _walk(p, c, msg, out, plain)
    elif not plain:
        _leaf(p, f, msg, out)


def problems(fr: Frame) -> list[str]:
    """What is not exact about this frame's decode (TPM 2.0 messages only)."""
    t = fr.tpm
    if fr.channel is not Channel.TPM or t is None or t.tag not in TPM2_TAGS:
        return []
    out: list[str] = []
    if fr.error:
        out.append(f"error: {fr.error}")
    if t.header_only:
        return [*out, "header-only TPM 2.0 message"]
    if t.fields is None:
        return [*out, "no fields"]
    msg = fr.message
    top = t.fields.in_order()
    _tile("", 0, len(msg), top, out)
    for f in top:
        _walk("", f, msg, out)
    # pytss re-marshals what it unmarshalled to exactly the parameter bytes
    if t.params and t.fields.parameters:
        ps = t.fields.parameters
        start, end = ps[0].offset, ps[-1].offset + ps[-1].size
        try:
            again = b"".join(_marshal(v) for v in t.params)
        except Exception as exc:
            out.append(f"pytss cannot re-marshal the parameters: {exc}")
        else:
            if again != msg[start:end]:
                out.append("re-marshalled parameters differ from the message bytes")
    for h in t.fields.handles:
        if cp.TPM2_HANDLE(h.value).marshal() != msg[h.offset : h.offset + 4]:
            out.append(f"handle {h.name} re-marshals differently")
    return out


def _marshal(v: object) -> bytes:
    size = getattr(v, "size", None)
    if size == 0 and type(v).__name__ in _COMPLEX_TPM2B:
        # tpm2-tss marshals a structure-carrying TPM2B from its structure, so it cannot
        # write the empty one (size 0) Part 3 allows, e.g. Commit's P1 or LoadExternal's
        # inPrivate; the unmarshalled value says it was empty.
        return b"\0\0"
    m = getattr(v, "marshal", None)
    if m is None:
        raise AssertionError(f"pytss cannot marshal {type(v).__name__}")
    return bytes(m())


_COMPLEX_TPM2B = {
    "TPM2B_ECC_POINT",
    "TPM2B_PUBLIC",
    "TPM2B_SENSITIVE",
    "TPM2B_SENSITIVE_CREATE",
    "TPM2B_NV_PUBLIC",
    "TPM2B_CREATION_DATA",
}


def check_frames(frames: Iterable[Frame]) -> dict[str, int]:
    """Assert every TPM 2.0 frame is exact; returns counts (messages, errors, header-only)."""
    counts = {"messages": 0, "errors": 0, "header_only": 0}
    bad: list[str] = []
    for fr in frames:
        if fr.channel is not Channel.TPM or fr.tpm is None:
            continue
        counts["messages"] += 1
        if fr.tpm.tag in TPM2_TAGS:
            counts["errors"] += bool(fr.error)
            counts["header_only"] += fr.tpm.header_only
        for p in problems(fr):
            bad.append(f"#{fr.seq} {fr.direction} {fr.name}: {p}")
    assert not bad, "decoded fields are not exact:\n" + "\n".join(bad[:40])
    return counts


def check_capture(path: str) -> dict[str, int]:
    """The self-check over every message of a capture or swtpm log."""
    return check_frames(frames_from_input(path))

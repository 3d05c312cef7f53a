"""Shared text rendering: one-line descriptions of frames, used by the pcapng comments and
the console (so both say the same thing about a message)."""

from __future__ import annotations

import os
from typing import TextIO

from ..codec.wellknown import well_known
from ..model import (
    Channel,
    CtrlInfo,
    Direction,
    Field,
    Fields,
    Frame,
    Kind,
    Session,
    Verdict,
    attrs_text,
)

SESSION_KINDS = {0x02: "hmac", 0x03: "policy"}
RESET, BOLD, DIM, RED, GREEN, YELLOW, CYAN = (
    "\033[0m",
    "\033[1m",
    "\033[2m",
    "\033[31m",
    "\033[32m",
    "\033[33m",
    "\033[36m",
)


def wants_colour(out: TextIO) -> bool:
    """Colour only on a terminal, and never with NO_COLOR set."""
    try:
        return out.isatty() and "NO_COLOR" not in os.environ
    except (OSError, ValueError):
        return False


def session_text(s: Session, *, command: bool) -> str:
    if s.handle is None:
        who = "s?"
    elif s.is_password:
        who = "PW"
    else:
        who = f"0x{s.handle:08x}"
    text = f"{who}:{attrs_text(s.attributes)}"
    if s.facts is not None and not s.is_password:
        text += f" ({s.facts.text()})"
    if command and s.is_password:
        text += f" authValue({len(s.auth)}B) IN CLEAR" if s.auth else " empty-auth"
    return text


def param_text(f: Frame) -> str:
    p = f.tpm.param if f.tpm is not None else None
    if p is None or p.type_name is None:
        return f"param={Verdict.NA}"
    size = "" if p.size is None else f"({p.size}B)"
    text = f"param={p.type_name}{size}:{p.word}"
    if p.recovered is not None:
        text += f" recovered={p.recovered[:64].hex()}"
    return text


def ctrl_fields(info: CtrlInfo) -> str:
    parts = []
    for k, v in info.fields.items():
        if k == "json":
            continue
        parts.append(
            f"{k}={v:#x}" if isinstance(v, int) and k in ("flags", "state_flags") else f"{k}={v}"
        )
    return " ".join(parts)


def one_line(f: Frame) -> str:
    """The annotation written as the pcapng packet comment."""
    arrow = "cmd" if f.direction is Direction.COMMAND else "rsp"
    head = f"conn {f.conn} {arrow} {f.name}"
    parts = [head]
    if f.channel is Channel.CTRL and f.ctrl is not None:
        parts[0] = f"conn {f.conn} ctrl {arrow} CMD_{f.ctrl.name}"
        if f.ctrl.result is not None:
            parts.append(f"result=0x{f.ctrl.result:x}")
        fields = ctrl_fields(f.ctrl)
        if fields:
            parts.append(fields)
    elif f.tpm is not None:
        t = f.tpm
        if f.direction is Direction.RESPONSE:
            parts.append(f"rc=0x{t.code:08x} {t.rc_text}")
        if f.locality is not None:
            parts.append(f"loc={f.locality}")
        if t.handles:
            parts.append("h=" + ",".join(f"0x{h:08x}" for h in t.handles))
        if t.sessions:
            cmd = f.direction is Direction.COMMAND
            parts.append("s=[" + "; ".join(session_text(s, command=cmd) for s in t.sessions) + "]")
        if not t.header_only or t.param.type_name:
            parts.append(param_text(f))
        if t.header_only:
            parts.append("header-only")
    if f.framing.value == "mssim":
        parts.append("mssim")
    if f.error:
        parts.append(f"[{f.error}]")
    what = semantic(f) if f.tpm is not None else None
    if what:
        parts.append("| " + what)
    return " ".join(parts)


def _value_text(fl: Field) -> str:
    if fl.kind is Kind.BYTES:
        assert isinstance(fl.value, bytes)
        n = len(fl.value)
        shown = fl.value[:TREE_BYTES].hex() + ("…" if n > TREE_BYTES else "")
        size = f"({n}) " if fl.type.startswith("TPM2B_") else ""
        return size + (shown or "''")
    if fl.kind in (Kind.INT, Kind.BITS):
        assert isinstance(fl.value, int)
        if fl.type == "TPM2_HANDLE":
            name = _HIERARCHIES.get(fl.value)
            return f"0x{fl.value:08x}" + (f" ({name})" if name else "")
        hexed = f"0x{fl.value:0{fl.size * 2}x}"
        return f"{fl.text} ({hexed})" if fl.text is not None else f"{fl.value} ({hexed})"
    return ""


TREE_BYTES = 32  # bytes shown per buffer in the tree (the hexdump shows them all)


def tree_lines(fields: Fields, indent: str = "    ") -> list[str]:
    """tpmstream-style: offset, name, type, value; children indented."""
    lines: list[str] = []

    def add(fl: Field, depth: int) -> None:
        mark = " [recovered]" if fl.recovered else " [encrypted]" if fl.encrypted else ""
        value = _value_text(fl)
        if fl.kind is Kind.STRUCT and fl.type.startswith("TPM2B_"):
            value = f"({fl.size - 2})"
        text = f"{indent}{fl.offset:04x} {'  ' * depth}{fl.name}: {fl.type}"
        lines.append(text + (f" = {value}" if value else "") + mark)
        for c in fl.children:
            if fl.kind is Kind.STRUCT and fl.type.startswith("TPM2B_") and c.name == "size":
                continue  # shown as (n) on the TPM2B line
            add(c, depth + 1)

    for fl in fields.in_order():
        add(fl, 0)
    return lines


# --- semantic one-liners -------------------------------------------------------------

_HIERARCHIES = {
    0x40000001: "owner",
    0x40000007: "null",
    0x4000000B: "endorsement",
    0x4000000C: "platform",
    0x4000000A: "lockout",
    0x40000009: "PW",
}
_SHOWN_ATTRS = ("restricted", "decrypt", "sign")
SEMANTIC_BYTES = 4  # bytes of a digest shown in a one-liner


def _kid(fl: Field | None, *path: str) -> Field | None:
    for name in path:
        if fl is None:
            return None
        fl = next((c for c in fl.children if c.name == name), None)
    return fl


def _int(fl: Field | None) -> int | None:
    return fl.value if fl is not None and isinstance(fl.value, int) else None


def _short(fl: Field | None) -> str:
    """An enumeration's constant without its prefix, lower case: TPM2_ALG_SHA256 -> sha256."""
    if fl is None:
        return "?"
    if fl.text is not None:
        if fl.kind is Kind.BITS:
            return fl.text
        for prefix in _PREFIXES:
            if fl.text.startswith(prefix):
                return fl.text.removeprefix(prefix).lower()
        return fl.text.lower()
    if fl.type == "TPM2_HANDLE" and isinstance(fl.value, int):
        return handle_text(fl.value)
    return str(fl.value)


_PREFIXES = (
    "TPM2_ALG_",
    "TPM2_ECC_",
    "TPM2_SE_",
    "TPM2_CAP_",
    "TPM2_SU_",
    "TPM2_RH_",
    "TPM2_CLOCK_",
    "TPM2_EO_",
    "TPM2_",
)


def handle_text(h: int) -> str:
    return _HIERARCHIES.get(h) or f"0x{h:08x}"


def _hexcut(data: bytes, n: int = SEMANTIC_BYTES) -> str:
    return data[:n].hex() + ("…" if len(data) > n else "")


def _buf(fl: Field | None) -> bytes | None:
    return fl.value if fl is not None and isinstance(fl.value, bytes) else None


def public_text(pub: Field | None) -> str:
    """`rsa2048 restricted|decrypt` of a TPM2B_PUBLIC / TPMT_PUBLIC field."""
    if pub is None:
        return "?"
    area = _kid(pub, "publicArea") or pub
    alg = _kid(area, "type")
    kind = _short(alg)
    if kind == "rsa":
        kind += str(_int(_kid(area, "parameters", "keyBits")) or "")
    elif kind == "ecc":
        kind += " " + _short(_kid(area, "parameters", "curveID"))
    elif kind == "symcipher":
        sym = _kid(area, "parameters", "sym")
        kind = f"{_short(_kid(sym, 'algorithm'))}{_int(_kid(sym, 'keyBits')) or ''}"
    attrs = _kid(area, "objectAttributes")
    shown = [a for a in (attrs.text or "").split("|") if a in _SHOWN_ATTRS] if attrs else []
    return kind + (" " + "|".join(shown) if shown else "")


def _pcr_sel(sel: Field | None) -> str:
    parts = []
    sels = _kid(sel, "pcrSelections")
    for s in sels.children if sels is not None else ():
        bits = _buf(_kid(s, "pcrSelect")) or b""
        pcrs = [i for i in range(len(bits) * 8) if bits[i // 8] >> (i % 8) & 1]
        if pcrs:
            parts.append(f"{_short(_kid(s, 'hash'))}:{','.join(map(str, pcrs))}")
    return " ".join(parts) or "none"


def _generic(fields: Fields) -> list[str]:
    out = [handle_text(_int(h) or 0) for h in fields.handles]
    for p in fields.parameters:
        if p.encrypted:
            out.append(f"{p.name}=<{len(_buf(p) or b'')}B encrypted>")
        elif p.kind in (Kind.INT, Kind.BITS):
            out.append(f"{p.name}={_short(p)}")
        elif p.kind is Kind.BYTES:
            out.append(f"{p.name}({len(_buf(p) or b'')})")
        elif p.type.startswith("TPM2B_"):
            out.append(f"{p.name}({p.size - 2})")
        else:
            out.append(p.name)
    return out


def semantic(f: Frame) -> str | None:
    """A short line saying what a TPM 2.0 message asks or answers, e.g.
    `PCR_Extend pcr=7 sha256=3fa1…`, `NV_Write 0x01500016 offset=0 size=32`."""
    t = f.tpm
    if t is None or t.fields is None:
        return None
    fs = t.fields
    h = [_int(x) or 0 for x in fs.handles]
    p = {x.name: x for x in fs.parameters}
    cmd = f.direction is Direction.COMMAND
    name = t.name
    words: list[str] | None = None
    if not cmd and t.code != 0:
        return None
    try:
        words = _special(name, cmd, h, p)
    except (AttributeError, KeyError, IndexError, TypeError):
        words = None
    if words is None:
        words = _generic(fs)
    text = " ".join([name if cmd else f"{name} ->", *words])
    return text if len(text) <= 160 else text[:159] + "…"


def _special(name: str, cmd: bool, h: list[int], p: dict[str, Field]) -> list[str] | None:
    if cmd:
        if name == "PCR_Extend":
            out = [f"pcr={h[0]}"]
            for d in _kid(p["digests"], "digests").children:  # type: ignore[union-attr]
                out.append(
                    f"{_short(_kid(d, 'hashAlg'))}={_hexcut(_buf(_kid(d, 'digest')) or b'')}"
                )
            return out
        if name in ("NV_Write", "NV_Read"):
            size = len(_buf(p["data"]) or b"") if name == "NV_Write" else _int(p["size"])
            return [f"0x{h[1]:08x}", f"offset={_int(p['offset'])}", f"size={size}"]
        if name == "GetCapability":
            cap = _short(p["capability"]).upper()
            return [cap, f"0x{_int(p['property']):x}+{_int(p['propertyCount'])}"]
        if name in ("CreatePrimary", "Create", "CreateLoaded"):
            return [handle_text(h[0]), public_text(p["inPublic"])]
        if name == "NV_DefineSpace":
            pub = _kid(p["publicInfo"], "nvPublic")
            attrs = _kid(pub, "attributes")
            return [
                f"0x{_int(_kid(pub, 'nvIndex')) or 0:08x}",
                f"size={_int(_kid(pub, 'dataSize'))}",
                attrs.text or "" if attrs else "",
            ]
        if name == "StartAuthSession":
            how = "salted" if len(_buf(p["encryptedSalt"]) or b"") else "unsalted"
            bind = "" if h[1] == 0x40000007 else f" bound(0x{h[1]:08x})"
            sym = p["symmetric"]
            alg = _short(_kid(sym, "algorithm"))
            if alg not in ("null", "xor"):
                alg += f"{_int(_kid(sym, 'keyBits'))}-{_short(_kid(sym, 'mode'))}"
            return [_short(p["sessionType"]), how + bind, alg, _short(p["authHash"])]
        if name == "GetRandom":
            return [f"{_int(p['bytesRequested'])}"]
        if name == "PCR_Read":
            return [_pcr_sel(p["pcrSelectionIn"])]
        return None
    if name in ("GetRandom", "Unseal", "NV_Read"):
        key = {"GetRandom": "randomBytes", "Unseal": "outData", "NV_Read": "data"}[name]
        value = _buf(p[key]) or b""
        known = well_known(value) if name == "Unseal" and not p[key].encrypted else None
        return ([known] if known else []) + [f"{len(value)} bytes"]
    if name == "GetCapability":
        data = _kid(p["capabilityData"], "data")
        n = _int(_kid(data, "count"))
        more = _short(p["moreData"])
        return [_short(_kid(p["capabilityData"], "capability")).upper(), f"{n}", f"more={more}"]
    if name in ("CreatePrimary", "CreateLoaded", "Load", "LoadExternal", "StartAuthSession"):
        return None  # generic: the new handle
    return None

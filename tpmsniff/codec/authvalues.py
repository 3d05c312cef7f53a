"""authValues an observer can know, and the sensitive values an observer can read.

`readable_values` lists every sensitive field of a message whose bytes an observer of the
bus could read: the field crossed in clear (PLAINTEXT), tpmsniff decrypted it (WEAK), or
it is a password-session authValue. The same list feeds learning (`AuthBook`) and the
`--sensitive` policy (docs/verdicts.md).

`AuthBook` keeps, per handle and per Name, the authValues that crossed readable (and
those given with --auth), so that a session bound to, or authorising, that entity can
be derived: empty is always a candidate. TPM2B parsing is pytss's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tpm2_pytss.constants import TPM2_CC
from tpm2_pytss.types import TPMS_SENSITIVE_CREATE, TPMT_SENSITIVE

from ..model import TPM_RS_PW, TpmInfo, Verdict

CC_CREATE_PRIMARY, CC_CREATE, CC_CREATE_LOADED = (
    TPM2_CC.CreatePrimary,
    TPM2_CC.Create,
    TPM2_CC.CreateLoaded,
)
CC_HIERARCHY_CHANGE_AUTH, CC_OBJECT_CHANGE_AUTH, CC_NV_CHANGE_AUTH = (
    TPM2_CC.HierarchyChangeAuth,
    TPM2_CC.ObjectChangeAuth,
    TPM2_CC.NV_ChangeAuth,
)
CC_NV_DEFINE, CC_LOAD_EXTERNAL, CC_IMPORT, CC_DUPLICATE = (
    TPM2_CC.NV_DefineSpace,
    TPM2_CC.LoadExternal,
    TPM2_CC.Import,
    TPM2_CC.Duplicate,
)
CC_UNSEAL, CC_NV_WRITE, CC_NV_READ, CC_GET_RANDOM = (
    TPM2_CC.Unseal,
    TPM2_CC.NV_Write,
    TPM2_CC.NV_Read,
    TPM2_CC.GetRandom,
)

# (cc, command?) -> field name of the first (encryptable) parameter, when it is sensitive
SENSITIVE_FIRST: dict[tuple[int, bool], str] = {
    (CC_UNSEAL, False): "outData",
    (CC_HIERARCHY_CHANGE_AUTH, True): "newAuth",
    (CC_OBJECT_CHANGE_AUTH, True): "newAuth",
    (CC_NV_CHANGE_AUTH, True): "newAuth",
    (CC_NV_DEFINE, True): "auth",
    (CC_LOAD_EXTERNAL, True): "inPrivate",
    (CC_IMPORT, True): "encryptionKey",
    (CC_DUPLICATE, True): "encryptionKeyIn",
    (CC_DUPLICATE, False): "encryptionKeyOut",
}
OPTIONAL_FIRST: dict[tuple[int, bool], tuple[str, str]] = {
    (CC_NV_WRITE, True): ("nv", "data"),
    (CC_NV_READ, False): ("nv", "data"),
    (CC_GET_RANDOM, False): ("random", "randomBytes"),
}
CREATES = (CC_CREATE_PRIMARY, CC_CREATE, CC_CREATE_LOADED)


def first_param_plain(info: TpmInfo, msg: bytes) -> bytes | None:
    """The first parameter's buffer as an observer reads it: in clear, or decrypted."""
    p = info.param
    if p.offset is None or not p.size:
        return None
    if p.verdict is Verdict.PLAINTEXT:
        return msg[p.offset + 2 : p.offset + 2 + p.size]
    if p.verdict is Verdict.WEAK and p.recovered is not None:
        return p.recovered
    return None


def _sensitive_create(buf: bytes) -> tuple[bytes, bytes] | None:
    try:
        sens, _ = TPMS_SENSITIVE_CREATE.unmarshal(buf)
        return bytes(sens.userAuth), bytes(sens.data)
    except Exception:
        return None


def sensitive_auth(buf: bytes) -> bytes | None:
    """The authValue inside a TPM2B_SENSITIVE's buffer (LoadExternal inPrivate)."""
    try:
        sens, _ = TPMT_SENSITIVE.unmarshal(buf)
        return bytes(sens.authValue)
    except Exception:
        return None


@dataclass(frozen=True, slots=True)
class Readable:
    field: str  # e.g. "Create inSensitive.userAuth", "session[0] password authValue"
    value: bytes
    how: str  # "in clear" | "decrypted (proof=hmac)" | ...
    option: str | None = None  # "nv" | "random": reported only when asked for


def readable_values(info: TpmInfo, msg: bytes, command: bool) -> list[Readable]:
    """Every non-empty sensitive value of this message that an observer could read."""
    out: list[Readable] = []
    p = info.param
    how = "in clear"
    if p.verdict is Verdict.PLAINTEXT and p.session is not None:
        how = "in clear despite the session's encryption attribute"
    if p.verdict is Verdict.WEAK:
        how = f"decrypted (proof={p.proof or 'none'})"
    plain = first_param_plain(info, msg) if info.cc is not None else None
    if plain and info.cc is not None:
        key = (info.cc, command)
        if command and info.cc in CREATES:
            parsed = _sensitive_create(plain)
            if parsed is not None:
                auth, data = parsed
                if auth:
                    out.append(Readable(f"{info.name} inSensitive.userAuth", auth, how))
                if data:
                    out.append(Readable(f"{info.name} inSensitive.data", data, how))
        elif key in SENSITIVE_FIRST:
            out.append(Readable(f"{info.name} {SENSITIVE_FIRST[key]}", plain, how))
        elif key in OPTIONAL_FIRST:
            opt, name = OPTIONAL_FIRST[key]
            out.append(Readable(f"{info.name} {name}", plain, how, option=opt))
    if command:
        for i, s in enumerate(info.sessions):
            if s.auth and s.handle == TPM_RS_PW:
                out.append(Readable(f"session[{i}] password authValue", s.auth, "in clear"))
            elif s.auth and s.facts is not None and s.facts.policy == "password":
                out.append(Readable(f"session[{i}] PolicyPassword authValue", s.auth, "in clear"))
    return out


MAX_VALUES = 8  # candidates kept per handle or Name
MAX_KEYS = 4096  # handles or Names remembered (oldest forgotten first)


def _bound(book: dict[Any, list[tuple[bytes, str]]]) -> None:
    while len(book) > MAX_KEYS:
        del book[next(iter(book))]


class AuthBook:
    """authValues known to an observer, by handle and by Name (newest first)."""

    def __init__(self, given: dict[int, bytes] | None = None) -> None:
        self.given = dict(given or {})
        self.by_handle: dict[int, list[tuple[bytes, str]]] = {}
        self.by_name: dict[bytes, list[tuple[bytes, str]]] = {}

    def learn(self, value: bytes, source: str, handle: int | None, name: bytes | None) -> None:
        if handle is not None:
            old = self.by_handle.pop(handle, [])
            self.by_handle[handle] = [(value, source)] + [e for e in old if e[0] != value]
            self.by_handle[handle][MAX_VALUES:] = []
            _bound(self.by_handle)
        if name is not None:
            old = self.by_name.pop(name, [])
            self.by_name[name] = [(value, source)] + [e for e in old if e[0] != value]
            self.by_name[name][MAX_VALUES:] = []
            _bound(self.by_name)

    def set_handle(self, value: bytes, source: str, handle: int) -> None:
        """A new authValue replaces the old one (HierarchyChangeAuth, NV_ChangeAuth)."""
        self.by_handle[handle] = [(value, source)]

    def forget(self, handle: int) -> None:
        self.by_handle.pop(handle, None)

    def candidates(self, handle: int | None, name: bytes | None) -> list[tuple[bytes, str]]:
        """(authValue, where it came from): --auth, learned by handle, by Name, and empty."""
        out: list[tuple[bytes, str]] = []
        if handle is not None and handle in self.given:
            out.append((self.given[handle], "--auth"))
        if handle is not None:
            out += self.by_handle.get(handle, [])
        if name is not None:
            out += self.by_name.get(name, [])
        out.append((b"", "empty"))
        seen: set[bytes] = set()
        uniq = []
        for v, src in out:
            if v not in seen:
                seen.add(v)
                uniq.append((v, src))
        return uniq

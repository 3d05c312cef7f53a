"""The annotated frame: the one immutable record every sink and check reads.

The relay produces raw messages; the codec turns each into a `Frame`. Sinks never
see sockets and never mutate frames, so they can run in any order (or offline).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .fields import Fields

TPM_RS_PW = 0x40000009  # the password session's handle (TPM2_RH.PW; tested equal)


class Direction(StrEnum):
    COMMAND = "command"
    RESPONSE = "response"


class Channel(StrEnum):
    TPM = "tpm"  # TPM command/response bytes (data channel)
    CTRL = "ctrl"  # swtpm CMD_* control channel


class Framing(StrEnum):
    RAW = "raw"  # bare TPM message
    MSSIM = "mssim"  # MS-simulator TPM_SEND_COMMAND prefix (+ trailer on responses)
    CTRL = "ctrl"  # swtpm control message
    UNFRAMED = "unframed"  # bytes that could not be framed; relayed as they came


class Verdict(StrEnum):
    """Parameter-encryption verdict vocabulary (see docs/verdicts.md)."""

    ENCRYPTED = "ENCRYPTED"  # no observer can derive the key (salted, or an authValue never
    # seen): Param.strength says why
    WEAK = "WEAK"  # an observer can derive the key (wire data + known authValues):
    # Param.recovered holds the plaintext, Param.proof whether an HMAC proved the key
    PLAINTEXT = "PLAINTEXT"  # encryptable, non-empty, and not encrypted
    UNKNOWN = "UNKNOWN"  # encrypted by a session whose start tpmsniff did not see
    NA = "n/a"  # nothing to protect


@dataclass(frozen=True, slots=True)
class SessionFacts:
    """What tpmsniff knows of a session from its StartAuthSession (see codec/sessions/)."""

    handle: int
    type: str  # "hmac" | "policy" | "trial" | "password" | "unknown"
    salted: bool | None = None
    bound: bool | None = None
    symmetric: str = "?"  # "AES-128-CFB", "XOR-SHA256", "NULL", "?"
    auth_hash: str = "?"
    origin: str = "observed"  # "observed" | "unknown" (first seen mid-stream)
    salt_key: str | None = None  # provenance of tpmKey, when salted
    tpm_key: int | None = None
    bind: int | None = None
    policy: str = ""  # policy sessions: "authvalue" after PolicyAuthValue, "password" after
    # PolicyPassword (then the HMAC field of a command is the authValue, in clear)

    def text(self) -> str:
        if self.type == "password":
            return "password"
        if self.origin == "unknown":
            return f"{self.type} unknown-origin"
        how = []
        if self.salted:
            how.append(f"salted({self.salt_key or hex(self.tpm_key or 0)})")
        if self.bound:
            how.append(f"bound(0x{self.bind or 0:08x})")
        if not how:
            how.append("unsalted+unbound")
        return f"{self.type} {'+'.join(how)} {self.symmetric} {self.auth_hash}"


@dataclass(frozen=True, slots=True)
class Session:
    """One authorization-area entry of a command or response."""

    handle: int | None  # None on a response whose command was not seen
    attributes: int
    nonce: bytes
    auth: bytes  # command: HMAC or (password sessions) the authValue; response: ack
    facts: SessionFacts | None = None

    @property
    def is_password(self) -> bool:
        return self.handle == TPM_RS_PW


@dataclass(frozen=True, slots=True)
class Param:
    """The first parameter: whether it is encryptable and whether it was encrypted."""

    verdict: Verdict
    type_name: str | None = None  # e.g. "TPM2B_SENSITIVE_CREATE"
    offset: int | None = None  # offset of the TPM2B size field within the TPM message
    size: int | None = None  # TPM2B buffer size (excluding its 2-byte size field)
    strength: str | None = None  # ENCRYPTED: why not derivable; WEAK: how it was derived;
    # PLAINTEXT: set only when a session flag said encrypted ("sent in clear despite ...")
    session: int | None = None  # handle of the session that encrypted it
    recovered: bytes | None = None  # WEAK: the plaintext tpmsniff decrypted
    proof: str | None = None  # "hmac": the session HMAC verified with the derived key (it
    # proves the session key, not that the parameter was encrypted) | "none"
    plaintext: str | None = None  # "parsed": the plaintext (decrypted, or the wire bytes
    # of a parameter sent in clear) parses exactly as the parameter's structured type
    note: str | None = None  # evidence from the TPM's answer (an error response)

    @property
    def word(self) -> str:
        """The verdict with its strength, as shown in comments and on the console."""
        parts = [self.strength] if self.strength and self.verdict is not Verdict.NA else []
        if self.proof and parts:
            parts.append(f"proof={self.proof}")
        if self.plaintext and parts:
            parts.append(f"plaintext={self.plaintext}")
        if self.note:
            parts.append(self.note)
        return f"{self.verdict}({', '.join(parts)})" if parts else str(self.verdict)


NO_PARAM = Param(Verdict.NA)


@dataclass(frozen=True, slots=True)
class TpmInfo:
    """Decoded TPM 2.0 (or header-only TPM 1.2 / unknown) message."""

    tag: int
    size: int
    code: int  # commandCode or responseCode
    cc: int | None  # the command code (responses: the paired command's, if known)
    name: str  # command name, e.g. "Create"
    handles: tuple[int, ...] = ()
    sessions: tuple[Session, ...] = ()
    param: Param = NO_PARAM
    rc_text: str | None = None  # responses only
    header_only: bool = False  # TPM 1.2, unknown or vendor code: no deeper decode
    params: tuple[Any, ...] = field(default=(), compare=False, repr=False)  # pytss objects
    fields: Fields | None = field(default=None, compare=False, repr=False)  # every field


@dataclass(frozen=True, slots=True)
class CtrlInfo:
    """Decoded swtpm control-channel message."""

    cmd: int | None  # CMD_* code (responses: the paired request's)
    name: str
    fields: dict[str, object] = field(default_factory=dict)
    result: int | None = None  # responses: TPM result code


@dataclass(frozen=True, slots=True)
class Frame:
    """One relayed message with everything tpmsniff knows about it."""

    seq: int  # live: 1-based message number of the run; offline: the input's frame number
    conn: int  # connection id (1-based)
    channel: Channel
    direction: Direction
    ts: float  # UNIX time the first byte was relayed
    raw: bytes  # exactly the bytes relayed, MS-sim prefix/trailer included
    framing: Framing
    prefix: int = 0  # bytes of transport prefix before the TPM message (MS-sim: 9 or 4)
    locality: int | None = None
    tpm: TpmInfo | None = None
    ctrl: CtrlInfo | None = None
    error: str | None = None  # why decoding stopped, if it did

    @property
    def message(self) -> bytes:
        """The TPM or control message without transport prefix or trailer."""
        if self.tpm is not None and self.framing is Framing.MSSIM:
            return self.raw[self.prefix : self.prefix + self.tpm.size]
        return self.raw

    @property
    def name(self) -> str:
        if self.tpm is not None:
            return self.tpm.name
        if self.ctrl is not None:
            return self.ctrl.name
        return "?"

    @property
    def verdict(self) -> Verdict:
        return self.tpm.param.verdict if self.tpm is not None else Verdict.NA

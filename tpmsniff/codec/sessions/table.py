"""The session table: what tpmsniff knows of each live session (from its
StartAuthSession, its nonces and, once proven, its sessionKey) and the facts it shows."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from tpm2_pytss.constants import TPM2_CC

from ...model import TPM_RS_PW, SessionFacts, TpmInfo
from ..authvalues import AuthBook, Readable
from ..names import NameBook
from ..paramcrypt import ALG_AES, ALG_NULL, ALG_XOR
from .handles import TPM_RH_NULL
from .objects import ObjectBook

CC_START_AUTH_SESSION = TPM2_CC.StartAuthSession
SE_TYPES = {0: "hmac", 1: "policy", 3: "trial"}
HASH_NAMES = {0x0004: "SHA1", 0x000B: "SHA256", 0x000C: "SHA384", 0x000D: "SHA512", 0x0010: "NULL"}


@dataclass(slots=True)
class SessionState:
    facts: SessionFacts
    sym_alg: int = ALG_NULL
    key_bits: int = 0
    mode: int = 0
    auth_hash: int = 0x000B
    nonce_tpm: bytes = b""
    nonce_caller: bytes = b""
    start_tpm: bytes = b""  # nonces of StartAuthSession, for the sessionKey
    start_caller: bytes = b""
    bind: int = TPM_RH_NULL
    bind_name: bytes | None = None
    salted: bool = False
    key: bytes | None = None  # the sessionKey, once an HMAC proved it
    key_src: str = ""
    key_auth: bytes = b""
    failed: bool = False  # an HMAC of this session verified with no candidate
    policy: str = ""


@dataclass(frozen=True, slots=True)
class StartRequest:
    """A StartAuthSession command, kept until its response names the session handle."""

    tpm_key: int
    bind: int
    nonce_caller: bytes
    salt_len: int
    type: str  # "hmac" | "policy" | "trial" | "se<n>"
    sym_alg: int
    key_bits: int
    mode: int
    auth_hash: int

    @classmethod
    def from_command(cls, info: TpmInfo) -> StartRequest | None:
        if info.cc != CC_START_AUTH_SESSION or len(info.params) != 5 or len(info.handles) != 2:
            return None
        nonce, salt, se, sym, auth_hash = info.params
        try:
            alg = int(sym.algorithm)
            bits = int(sym.keyBits.exclusiveOr) if alg == ALG_XOR else int(sym.keyBits.sym)
            mode = int(sym.mode.sym) if alg not in (ALG_XOR, ALG_NULL) else 0
        except Exception:  # an odd message must never stop annotation
            return None
        return cls(
            tpm_key=info.handles[0],
            bind=info.handles[1],
            nonce_caller=bytes(nonce),
            salt_len=len(bytes(salt)),
            type=SE_TYPES.get(int(se), f"se{int(se)}"),
            sym_alg=alg,
            key_bits=bits,
            mode=mode,
            auth_hash=int(auth_hash),
        )

    @property
    def salted(self) -> bool:
        return self.tpm_key != TPM_RH_NULL and self.salt_len > 0


@dataclass(slots=True)
class Pending:
    """A command waiting for its response."""

    info: TpmInfo
    msg: bytes = b""
    start: StartRequest | None = None
    drop: list[int] = field(default_factory=list)
    readable: list[Readable] = field(default_factory=list)


def sym_text(alg: int, bits: int, mode: int) -> str:
    if alg == ALG_NULL:
        return "NULL"
    if alg == ALG_XOR:
        return f"XOR-{HASH_NAMES.get(bits, hex(bits))}"
    name = {ALG_AES: "AES", 0x0026: "CAMELLIA", 0x0013: "SM4"}.get(alg, f"alg{alg:#x}")
    m = {0x0043: "CFB"}.get(mode, f"mode{mode:#x}")
    return f"{name}-{bits}-{m}"


class SessionTable:
    """Sessions, objects, Names and authValues of one TPM (handles are global on a TPM)."""

    def __init__(self, auth: dict[int, bytes] | None = None) -> None:
        self.book = AuthBook(auth or {})
        self.names = NameBook()
        self.objects = ObjectBook()
        self.sessions: dict[int, SessionState] = {}

    def facts(self, handle: int | None) -> SessionFacts:
        if handle is None:
            return SessionFacts(0, "unknown", origin="unknown")
        if handle == TPM_RS_PW:
            return SessionFacts(handle, "password", salted=False, bound=False, symmetric="NULL")
        s = self.sessions.get(handle)
        if s is not None:
            return replace(s.facts, policy=s.policy) if s.policy else s.facts
        kind = {0x02: "hmac", 0x03: "policy"}.get(handle >> 24, "unknown")
        return SessionFacts(handle, kind, origin="unknown")

    def start(self, req: StartRequest, handle: int, nonce_tpm: bytes) -> None:
        """StartAuthSession succeeded: the session `handle` begins."""
        bound = req.bind != TPM_RH_NULL
        facts = SessionFacts(
            handle,
            req.type,
            salted=req.salted,
            bound=bound,
            symmetric=sym_text(
                req.sym_alg, req.key_bits if req.sym_alg != ALG_NULL else 0, req.mode
            ),
            auth_hash=HASH_NAMES.get(req.auth_hash, hex(req.auth_hash)),
            salt_key=self.objects.origin(req.tpm_key) if req.salted else None,
            tpm_key=req.tpm_key,
            bind=req.bind,
        )
        self.sessions[handle] = SessionState(
            facts,
            req.sym_alg,
            req.key_bits,
            req.mode,
            req.auth_hash,
            nonce_tpm,
            req.nonce_caller,
            start_tpm=nonce_tpm,
            start_caller=req.nonce_caller,
            bind=req.bind,
            bind_name=self.names.name(req.bind) if bound else None,
            salted=req.salted,
        )

    def is_bind(self, st: SessionState, entity: int) -> bool:
        """`entity` is the session's bind entity (same handle, and same Name when known)."""
        if st.bind == TPM_RH_NULL or entity != st.bind:
            return False
        name = self.names.name(entity)
        return st.bind_name is None or name is None or name == st.bind_name

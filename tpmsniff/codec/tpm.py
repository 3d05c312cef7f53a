"""Decoding of TPM messages with tpm2-pytss's `command_parser`, plus a header-only fallback.

Nothing here raises on bad input: a message that pytss cannot parse is decoded as far as
the header allows and the reason is returned alongside, to become an annotation.
"""

from __future__ import annotations

import io
from functools import cache
from typing import Any, get_args, get_origin

from tpm2_pytss import command_parser as cp
from tpm2_pytss.constants import TPM2_CC, TPMA_SESSION
from tpm2_pytss.TSS2_Exception import TSS2_Exception

from ..model import NO_PARAM, Param, Session, TpmInfo, Verdict

TPM_RS_PW = 0x40000009
ST_SESSIONS = 0x8002
DECRYPT = int(TPMA_SESSION.DECRYPT)
ENCRYPT = int(TPMA_SESSION.ENCRYPT)

# TPM 1.2 ordinals seen from firmware and QEMU probes; enough to name them.
TPM12_NAMES = {0xF1: "TPM1.2 GetTicks", 0x65: "TPM1.2 GetCapability", 0x99: "TPM1.2 Startup"}
_ATTR_NAMES = (
    (0x01, "cont"),
    (0x02, "auditexcl"),
    (0x04, "auditreset"),
    (0x20, "decrypt"),
    (0x40, "encrypt"),
    (0x80, "audit"),
)


def attrs_text(attrs: int) -> str:
    names = [n for bit, n in _ATTR_NAMES if attrs & bit]
    return "|".join(names) if names else "-"


@cache
def cc_name(cc: int) -> str:
    try:
        return str(TPM2_CC.to_string(cc)).removeprefix("TPM2_CC.")
    except ValueError:
        if cc & 0x20000000:
            return f"Vendor_0x{cc:08x}"
        return f"CC_0x{cc:08x}"


@cache
def rc_text(rc: int) -> str:
    """Tss2_RC_Decode text, e.g. 'tpm:session(1):authorization failure ...'."""
    if rc == 0:
        return "success"
    try:
        return str(TSS2_Exception(rc))
    except Exception:  # pragma: no cover - libtss2-rc always answers
        return f"rc 0x{rc:08x}"


@cache
def command_layout(cc: int) -> tuple[int, str | None] | None:
    """(handle count, encryptable first-parameter type name) or None if pytss lacks cc."""
    try:
        cls = cp.tpm2_command.lookup_command_class(cc)
    except TSS2_Exception:
        return None
    return cls.num_handles(), _encryptable(cls.parameter_types())


@cache
def _param_types(cc: int, command: bool) -> tuple[Any, ...]:
    """pytss parameter types of a command or response (cached: pytss derives them from
    dataclass fields on every call)."""
    look = (
        cp.tpm2_command.lookup_command_class if command else cp.tpm2_response.lookup_response_class
    )
    return tuple(look(cc).parameter_types())


@cache
def response_layout(cc: int) -> tuple[int, str | None] | None:
    try:
        cls = cp.tpm2_response.lookup_response_class(cc)
    except TSS2_Exception:
        return None
    return int(cls.has_handle()), _encryptable(cls.parameter_types())


def _encryptable(params: tuple[Any, ...]) -> str | None:
    if not params:
        return None
    for arg in get_args(params[0]):
        if get_origin(arg) is cp.TPM_ENCRYPTED_PARAMETER:
            return str(get_args(arg)[0].__name__)
    return None


def _header(msg: bytes) -> tuple[int, int, int]:
    return (
        int.from_bytes(msg[0:2], "big"),
        int.from_bytes(msg[2:6], "big"),
        int.from_bytes(msg[6:10], "big"),
    )


def _param(msg: bytes, offset: int, type_name: str | None, flag_set: bool) -> Param:
    if type_name is None:
        return NO_PARAM
    if offset + 2 > len(msg):
        return Param(Verdict.NA, type_name, offset, None)
    size = int.from_bytes(msg[offset : offset + 2], "big")
    if size == 0:
        return Param(Verdict.NA, type_name, offset, 0)  # nothing to protect
    verdict = Verdict.ENCRYPTED if flag_set else Verdict.PLAINTEXT
    return Param(verdict, type_name, offset, size)


def decode_command(msg: bytes) -> tuple[TpmInfo, str | None]:
    """Decode one TPM command (without transport prefix). Returns (info, error)."""
    tag, size, cc = _header(msg)
    if tag not in (0x8001, 0x8002):
        name = TPM12_NAMES.get(cc, f"TPM1.2 0x{cc:08x}")
        return TpmInfo(tag, size, cc, cc, name, header_only=True), None
    name = cc_name(cc)
    layout = command_layout(cc)
    if layout is None:
        return TpmInfo(tag, size, cc, cc, name, header_only=True), None
    nh, enc_type = layout
    handles = tuple(
        int.from_bytes(msg[10 + 4 * i : 14 + 4 * i], "big")
        for i in range(nh)
        if 14 + 4 * i <= len(msg)
    )
    offset = 10 + 4 * nh
    try:
        if size != len(msg) or offset > size:
            raise ValueError("commandSize does not match the message")
        parsed_sessions: tuple[Any, ...] = ()
        if tag == ST_SESSIONS:
            auth_size = int.from_bytes(msg[offset : offset + 4], "big")
            if offset + 4 + auth_size > size:
                raise ValueError("authorizationSize exceeds the command")
            parsed_sessions = tuple(cp.read_command_sessions(io.BytesIO(msg[offset:])))
            offset += 4 + auth_size
        types = cp._set_encrypted_parameter(
            _param_types(cc, True), parsed_sessions, TPMA_SESSION.DECRYPT
        )
        params, _ = cp.read_and_unmarshal(msg[offset:], *types)
    except Exception as exc:  # pytss raises TSS2_Exception, ValueError, struct errors...
        return TpmInfo(tag, size, cc, cc, name, handles, header_only=True), _why(exc)
    sessions = tuple(
        Session(int(s.handle), int(s.attributes), bytes(s.nonce), bytes(s.authorization))
        for s in parsed_sessions
    )
    flag = any(s.attributes & DECRYPT for s in sessions)
    param = _param(msg, offset, enc_type, flag)
    info = TpmInfo(tag, size, cc, cc, name, handles, sessions, param, params=tuple(params))
    return info, None


def decode_response(msg: bytes, command: TpmInfo | None) -> tuple[TpmInfo, str | None]:
    """Decode one TPM response, paired with its command's decode when known."""
    tag, size, rc = _header(msg)
    cc = command.cc if command is not None else None
    name = command.name if command is not None else "?"
    text = rc_text(rc)
    if tag not in (0x8001, 0x8002) or cc is None or command is None or command.header_only:
        return TpmInfo(tag, size, rc, cc, name, rc_text=text, header_only=True), None
    if rc != 0:
        return TpmInfo(tag, size, rc, cc, name, rc_text=text), None
    layout = response_layout(cc)
    if layout is None:
        return TpmInfo(tag, size, rc, cc, name, rc_text=text, header_only=True), None
    nh, enc_type = layout
    try:
        handle, params, rsp_sessions = _read_response(msg, cc, nh)
    except Exception as exc:
        return TpmInfo(tag, size, rc, cc, name, rc_text=text, header_only=True), _why(exc)
    handles = (handle,) if handle is not None else ()
    cmd_sessions = command.sessions
    sessions = tuple(
        Session(
            cmd_sessions[i].handle if i < len(cmd_sessions) else None,
            int(s.attributes),
            bytes(s.nonce),
            bytes(s.acknowledgment),
        )
        for i, s in enumerate(rsp_sessions)
    )
    offset = 10 + 4 * nh + (4 if tag == ST_SESSIONS else 0)
    flag = any(s.attributes & ENCRYPT for s in sessions) or any(
        s.attributes & ENCRYPT for s in cmd_sessions
    )
    param = _param(msg, offset, enc_type, flag)
    return TpmInfo(tag, size, rc, cc, name, handles, sessions, param, text, params=params), None


def _read_response(msg: bytes, cc: int, nh: int) -> tuple[int | None, tuple[Any, ...], list[Any]]:
    """Parse a successful response with pytss types.

    Not `cp.read_response`: tpm2-pytss 3.0.0 reads a 4-byte size before the response
    authorization area, which has none (TPM 2.0 Part 1 §18.8), so every response with
    sessions fails to parse there.
    """
    tag = int.from_bytes(msg[0:2], "big")
    off = 10
    handle = None
    if nh:
        handle = int.from_bytes(msg[off : off + 4], "big")
        off += 4
    if tag == ST_SESSIONS:
        psize = int.from_bytes(msg[off : off + 4], "big")
        off += 4
        if off + psize > len(msg):
            raise ValueError("parameterSize exceeds the response")
        pdata, sdata = msg[off : off + psize], msg[off + psize :]
    else:
        pdata, sdata = msg[off:], b""
    sessions = []
    while sdata:
        (nonce, attrs, ack), used = cp.read_and_unmarshal(
            sdata, cp.TPM2B_NONCE, cp.TPMA_SESSION, cp.TPM2B_DIGEST
        )
        sessions.append(cp.tpm2_response_session(nonce, attrs, ack))
        sdata = sdata[used:]
    types = cp._set_encrypted_parameter(_param_types(cc, False), sessions, TPMA_SESSION.ENCRYPT)
    params, _ = cp.read_and_unmarshal(pdata, *types)
    return handle, tuple(params), sessions


def _why(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"decode failed: {text.splitlines()[0]}"

"""Decoding of TPM messages with tpm2-pytss's `command_parser`, plus a header-only fallback.

Nothing here raises on bad input: a message that pytss cannot parse is decoded as far as
the header allows and the reason is returned alongside, to become an annotation.
"""

from __future__ import annotations

import io
import os
from dataclasses import replace
from functools import cache, lru_cache
from typing import Any, get_args, get_origin

from tpm2_pytss import command_parser as cp
from tpm2_pytss import types as pytypes
from tpm2_pytss.constants import TPM2_CC, TPM2_CLOCK, TPM2_ECC, TPM2_ECC_CURVE, TPMA_SESSION
from tpm2_pytss.TSS2_Exception import TSS2_Exception

from ..model import NO_PARAM, Field, Fields, Kind, Param, Session, TpmInfo, Verdict
from .fields import int_field, value_field
from .part3 import NAMES

# tpm2-tss (under tpm2-pytss) logs every structure it cannot unmarshal ("count too big")
# straight to fd 2, and reads TSS2_LOG at its first log call, after this import. Guests
# and damaged captures send such structures; tpmsniff reports them itself, in one line.
# Set only where tpmsniff decodes, and TSS2_LOG set by the user still wins.
os.environ.setdefault("TSS2_LOG", "all+NONE")

ST_SESSIONS = 0x8002
DECRYPT = int(TPMA_SESSION.DECRYPT)
ENCRYPT = int(TPMA_SESSION.ENCRYPT)

# TPM 1.2 ordinals seen from firmware and QEMU probes; enough to name them.
TPM12_NAMES = {0xF1: "TPM1.2 GetTicks", 0x65: "TPM1.2 GetCapability", 0x99: "TPM1.2 Startup"}
# Codes pytss names by an alias (TPM2_CC.FIRST, .LAST, MAC for HMAC) instead of Part 3's.
_CC_NAMES = {
    0x11F: "NV_UndefineSpaceSpecial",
    0x155: "HMAC",
    0x15B: "HMAC_Start",
    0x19C: "PolicyParameters",
}


@cache
def cc_name(cc: int) -> str:
    if cc in _CC_NAMES:
        return _CC_NAMES[cc]
    try:
        return str(TPM2_CC.to_string(cc)).removeprefix("TPM2_CC.")
    except ValueError:
        if cc & 0x20000000:
            return f"Vendor_0x{cc:08x}"
        return f"CC_0x{cc:08x}"


# Gaps in tpm2-pytss 3.0's command_parser, filled here.
class TPM2_CLOCK_ADJUST(TPM2_CLOCK):  # type: ignore[misc]
    """ClockRateAdjust's rateAdjust: pytss names the type TPM2_CLOCK, which its C
    library lacks ("undefined type name"); on the wire it is an INT8."""

    _alias_name = "INT8"


class TPMI_ECC_CURVE(TPM2_ECC_CURVE):  # type: ignore[misc]
    """ECC_Parameters' and EC_Ephemeral's curveID: pytss names it TPM2_ECC (no C type)."""

    _alias_name = "UINT16"


_TYPE_FIX: dict[Any, Any] = {TPM2_CLOCK: TPM2_CLOCK_ADJUST, TPM2_ECC: TPMI_ECC_CURVE}
# Parameters pytss leaves out (their bytes would go unexplained).
_MISSING: dict[tuple[int, bool], tuple[Any, ...]] = {
    (0x17F, True): (pytypes.TPML_PCR_SELECTION,),  # PolicyPCR: pcrs
    (0x181, False): (pytypes.TPMS_TIME_INFO,),  # ReadClock: currentTime
}


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
    types = tuple(_TYPE_FIX.get(t, t) for t in look(cc).parameter_types())
    return types + _MISSING.get((cc, command), ())


class _Flagged:
    """A session that sets the flag `_set_encrypted_parameter` looks for."""

    def __init__(self, attributes: int) -> None:
        self.attributes = attributes


@cache
def _wire_types(cc: int, command: bool, flagged: bool) -> tuple[Any, ...]:
    """The types the parameter area is read with: the first one wrapped as
    TPM_ENCRYPTED_PARAMETER when a session sets DECRYPT (commands) or ENCRYPT (responses)
    and it is encryptable. pytss's own rule, cached: it costs ~9 µs a message."""
    flag = TPMA_SESSION.DECRYPT if command else TPMA_SESSION.ENCRYPT
    sessions = [_Flagged(int(flag))] if flagged else []
    return tuple(cp._set_encrypted_parameter(_param_types(cc, command), sessions, flag))


def _names(cc: int) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    return NAMES.get(cc, ((), (), (), ()))


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


def _head_fields(msg: bytes, command: bool) -> tuple[Field, ...]:
    return _head_fields_of(msg[:10], command)


@lru_cache(maxsize=1024)
def _head_fields_of(head: bytes, command: bool) -> tuple[Field, ...]:
    """Header fields by the 10 header bytes (immutable; most messages share a header with
    many others: the same size, code and tag)."""
    tag, size, code = _header(head)
    return (
        int_field("tag", "TPM2_ST", 0, 2, tag),
        int_field("commandSize" if command else "responseSize", "UINT32", 2, 4, size),
        int_field("commandCode", "TPM2_CC", 6, 4, code)
        if command
        else Field(
            "responseCode", "TPM2_RC", 6, 4, Kind.INT, code, None if code else "TPM2_RC_SUCCESS"
        ),
    )


def _handle_fields(
    names: tuple[str, ...], handles: tuple[int, ...], offset: int
) -> tuple[Field, ...]:
    return tuple(
        int_field(
            names[i] if i < len(names) else f"handle{i + 1}", "TPM2_HANDLE", offset + 4 * i, 4, h
        )
        for i, h in enumerate(handles)
    )


def _param_fields(
    names: tuple[str, ...], params: tuple[Any, ...], offset: int
) -> tuple[Field, ...]:
    out: list[Field] = []
    for i, v in enumerate(params):
        name = names[i] if i < len(names) else f"parameter{i + 1}"
        if isinstance(v, cp.TPM_ENCRYPTED_PARAMETER):
            data = bytes(v)
            f = Field(
                name,
                v.underlying_type.__name__,
                offset,
                2 + len(data),
                Kind.BYTES,
                data,
                encrypted=True,
            )
        else:
            f = value_field(name, v, offset)
        out.append(f)
        offset += f.size
    return tuple(out)


def _session_field(i: int, s: Any, offset: int, command: bool) -> Field:
    kids: list[Field] = []
    off = offset
    if command:
        kids.append(int_field("sessionHandle", "TPM2_HANDLE", off, 4, int(s.handle)))
        off += 4
    for name, v in (
        ("nonce", s.nonce),
        ("sessionAttributes", s.attributes),
        ("hmac", s.authorization if command else s.acknowledgment),
    ):
        f = value_field(name, v, off)
        kids.append(f)
        off += f.size
    kind = "TPMS_AUTH_COMMAND" if command else "TPMS_AUTH_RESPONSE"
    return Field(f"session[{i}]", kind, offset, off - offset, Kind.STRUCT, children=tuple(kids))


# Decoding is a pure function of the bytes (and, for a response, of what it uses of its
# command), and clients repeat messages byte for byte (GetRandom, GetCapability,
# PCR_Read, ReadPublic...): each distinct message of at most CACHE_BYTES is decoded once
# while among the last CACHE_ENTRIES. What is cached is frozen (TpmInfo, Fields); nobody
# mutates the pytss objects in `params`. Bounded: at most 2 * CACHE_ENTRIES * CACHE_BYTES
# of keys, whatever a client sends.
CACHE_ENTRIES = 256
CACHE_BYTES = 4096


def decode_command(msg: bytes) -> tuple[TpmInfo, str | None]:
    """Decode one TPM command (without transport prefix). Returns (info, error)."""
    if len(msg) <= CACHE_BYTES:
        return _command_cached(bytes(msg))
    return _decode_command(msg)


def decode_response(msg: bytes, command: TpmInfo | None) -> tuple[TpmInfo, str | None]:
    """Decode one TPM response, paired with its command's decode when known."""
    if command is None:
        key: _CommandKey = (None, "?", True, ())
    else:
        sessions = tuple((s.handle, s.attributes & ENCRYPT) for s in command.sessions)
        key = (command.cc, command.name, command.header_only, sessions)
    if len(msg) <= CACHE_BYTES:
        return _response_cached(bytes(msg), key)
    return _decode_response(msg, key)


@lru_cache(maxsize=CACHE_ENTRIES)
def _command_cached(msg: bytes) -> tuple[TpmInfo, str | None]:
    return _decode_command(msg)


# what a response's decode reads of its command: cc, name, header_only, and each
# session's handle and ENCRYPT attribute
_CommandKey = tuple[int | None, str, bool, tuple[tuple[int | None, int], ...]]


@lru_cache(maxsize=CACHE_ENTRIES)
def _response_cached(msg: bytes, command: _CommandKey) -> tuple[TpmInfo, str | None]:
    return _decode_response(msg, command)


def _decode_command(msg: bytes) -> tuple[TpmInfo, str | None]:
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
    hnames, pnames, _, _ = _names(cc)
    try:
        if size != len(msg) or offset > size:
            raise ValueError("commandSize does not match the message")
        parsed_sessions: tuple[Any, ...] = ()
        auth: tuple[Field, ...] = ()
        if tag == ST_SESSIONS:
            auth_size = int.from_bytes(msg[offset : offset + 4], "big")
            if offset + 4 + auth_size > size:
                raise ValueError("authorizationSize exceeds the command")
            parsed_sessions = tuple(cp.read_command_sessions(io.BytesIO(msg[offset:])))
            fs = [int_field("authorizationSize", "UINT32", offset, 4, auth_size)]
            off = offset + 4
            for i, ps in enumerate(parsed_sessions):
                fs.append(_session_field(i, ps, off, True))
                off += fs[-1].size
            auth = tuple(fs)
            offset += 4 + auth_size
        types = _wire_types(cc, True, any(s.attributes & DECRYPT for s in parsed_sessions))
        params, used = cp.read_and_unmarshal(msg[offset:], *types)
    except Exception as exc:  # pytss raises TSS2_Exception, ValueError, struct errors...
        return TpmInfo(tag, size, cc, cc, name, handles, header_only=True), _why(exc)
    sessions = tuple(
        Session(int(s.handle), int(s.attributes), bytes(s.nonce), bytes(s.authorization))
        for s in parsed_sessions
    )
    flag = any(s.attributes & DECRYPT for s in sessions)
    param = _param(msg, offset, enc_type, flag)
    err = None
    fields = None
    try:
        fields = Fields(
            _head_fields(msg, True),
            _handle_fields(hnames, handles, 10),
            auth,
            _param_fields(pnames, tuple(params), offset),
        )
    except Exception as exc:
        err = "fields: " + _why(exc).removeprefix("decode failed: ")
    if offset + used != size:
        err = f"decode failed: {size - offset - used} bytes after the last parameter"
    info = TpmInfo(
        tag, size, cc, cc, name, handles, sessions, param, params=tuple(params), fields=fields
    )
    return info, err


def _decode_response(msg: bytes, command: _CommandKey) -> tuple[TpmInfo, str | None]:
    tag, size, rc = _header(msg)
    cc, name, cmd_header_only, cmd_sessions = command
    text = rc_text(rc)
    if tag not in (0x8001, 0x8002) or cc is None or cmd_header_only:
        return TpmInfo(tag, size, rc, cc, name, rc_text=text, header_only=True), None
    if rc != 0:
        fields = Fields(_head_fields(msg, False)) if size == len(msg) == 10 else None
        return TpmInfo(tag, size, rc, cc, name, rc_text=text, fields=fields), None
    layout = response_layout(cc)
    if layout is None:
        return TpmInfo(tag, size, rc, cc, name, rc_text=text, header_only=True), None
    nh, enc_type = layout
    try:
        if size != len(msg):
            raise ValueError("responseSize does not match the message")
        handle, params, rsp_sessions, pend = _read_response(msg, cc, nh)
    except Exception as exc:
        return TpmInfo(tag, size, rc, cc, name, rc_text=text, header_only=True), _why(exc)
    handles = (handle,) if handle is not None else ()
    sessions = tuple(
        Session(
            cmd_sessions[i][0] if i < len(cmd_sessions) else None,
            int(s.attributes),
            bytes(s.nonce),
            bytes(s.acknowledgment),
        )
        for i, s in enumerate(rsp_sessions)
    )
    offset = 10 + 4 * nh + (4 if tag == ST_SESSIONS else 0)
    flag = any(s.attributes & ENCRYPT for s in sessions) or any(enc for _, enc in cmd_sessions)
    param = _param(msg, offset, enc_type, flag)
    _, _, rhnames, rpnames = _names(cc)
    err = None
    fields = None
    try:
        pf = _param_fields(rpnames, params, offset)
        auth: list[Field] = []
        if tag == ST_SESSIONS:
            auth.append(int_field("parameterSize", "UINT32", offset - 4, 4, pend - offset))
            off = pend
            for i, rs in enumerate(rsp_sessions):
                auth.append(_session_field(i, rs, off, False))
                off += auth[-1].size
        fields = Fields(
            _head_fields(msg, False), _handle_fields(rhnames, handles, 10), tuple(auth), pf
        )
        end = (pf[-1].offset + pf[-1].size) if pf else offset
        if end != pend:
            err = f"decode failed: {pend - end} bytes after the last parameter"
    except Exception as exc:
        err = "fields: " + _why(exc).removeprefix("decode failed: ")
    info = TpmInfo(
        tag, size, rc, cc, name, handles, sessions, param, text, params=params, fields=fields
    )
    return info, err


def _read_response(
    msg: bytes, cc: int, nh: int
) -> tuple[int | None, tuple[Any, ...], list[Any], int]:
    """Parse a successful response with pytss types; also returns where the parameter
    area ends.

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
    pend = off + len(pdata)
    sessions = []
    while sdata:
        (nonce, attrs, ack), used = cp.read_and_unmarshal(
            sdata, cp.TPM2B_NONCE, cp.TPMA_SESSION, cp.TPM2B_DIGEST
        )
        sessions.append(cp.tpm2_response_session(nonce, attrs, ack))
        sdata = sdata[used:]
    types = _wire_types(cc, False, any(s.attributes & ENCRYPT for s in sessions))
    params, _ = cp.read_and_unmarshal(pdata, *types)
    return handle, tuple(params), sessions, pend


def with_recovered(info: TpmInfo) -> TpmInfo:
    """When tpmsniff decrypted the first parameter (a WEAK session), decode the plaintext
    into fields too, in place of the ciphertext, marked as recovered."""
    p = info.param
    fs = info.fields
    if p.recovered is None or fs is None or not fs.parameters or p.type_name is None:
        return info
    first = fs.parameters[0]
    cls = getattr(pytypes, p.type_name, None)
    if cls is None:
        return info
    buf = len(p.recovered).to_bytes(2, "big") + p.recovered
    try:
        obj, used = cls.unmarshal(buf)
        if used != len(buf):
            return info
        plain = value_field(first.name, obj, first.offset)
    except Exception:  # a wrong key gives garbage: keep the ciphertext field
        return info
    fields = replace(fs, parameters=(plain._replace(recovered=True), *fs.parameters[1:]))
    return replace(info, fields=fields)


def _why(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"decode failed: {text.splitlines()[0]}"

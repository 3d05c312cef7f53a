"""Field trees: the handles and parameters tpm2-pytss unmarshalled, as `model.Field`s.

Sans-IO. The values come from pytss's objects (its C structures, read through cffi); this
module adds what they lack: the Part 3 names (part3.py), the wire offset and size of every
field, union members picked by their selector (Part 2), enumeration constant names and
attribute flag names. tests/helpers/fieldcheck.py proves the result on every captured message:
the fields tile the message and re-marshal (pytss) to exactly its bytes.

Over 400 lines for a reason: about half is the Part 2 tables the walker reads (union
selectors, constant and attribute names); each rule is next to the code that applies it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, lru_cache
from typing import Any

from tpm2_pytss import constants as C
from tpm2_pytss.internal.type_mapping import _element_type_map, _type_map
from tpm2_pytss.types import TPM_OBJECT, ffi

from ..model import Field, Kind

_INT_NAMES = {
    "uint8_t": "UINT8",
    "uint16_t": "UINT16",
    "uint32_t": "UINT32",
    "uint64_t": "UINT64",
    "int8_t": "INT8",
    "int16_t": "INT16",
    "int32_t": "INT32",
    "int64_t": "INT64",
}
# Part 2 types pytss's type map leaves as plain integers, named for a reader.
_EXTRA_TYPES = {
    ("TPMS_CLOCK_INFO", "safe"): "TPMI_YES_NO",
    ("TPMS_TAGGED_PROPERTY", "property"): "TPM2_PT",
    ("TPMS_NV_PUBLIC", "nvIndex"): "TPM2_HANDLE",
    ("TPMS_CONTEXT", "savedHandle"): "TPM2_HANDLE",
    ("TPMS_ALG_PROPERTY", "alg"): "TPM2_ALG",
    ("TPMS_QUOTE_INFO", "pcrSelect"): "TPML_PCR_SELECTION",
}

# TPM_ALG_ID values (Part 2 §6.3) that select union members.
_RSA, _KEYEDHASH, _ECC, _SYMCIPHER = 0x01, 0x08, 0x23, 0x25
_XOR, _NULL, _HMAC = 0x0A, 0x10, 0x05
_SYM_CIPHERS = {0x03, 0x06, 0x13, 0x26}  # TDES, AES, SM4, CAMELLIA
_DIGEST_SIZES = {
    0x04: 20,
    0x0B: 32,
    0x0C: 48,
    0x0D: 64,
    0x12: 32,
    0x27: 32,
    0x28: 48,
    0x29: 64,
}
_HASH_MEMBER = {0x04: "sha1", 0x0B: "sha256", 0x0C: "sha384", 0x0D: "sha512", 0x12: "sm3_256"}
_SIG_SCHEMES = {  # also the members of TPMU_SIGNATURE
    0x14: "rsassa",
    0x16: "rsapss",
    0x18: "ecdsa",
    0x1A: "ecdaa",
    0x1B: "sm2",
    0x1C: "ecschnorr",
    0x05: "hmac",
}
_ASYM_SCHEMES = {
    0x19: "ecdh",
    0x1D: "ecmqv",
    0x14: "rsassa",
    0x16: "rsapss",
    0x18: "ecdsa",
    0x1A: "ecdaa",
    0x1B: "sm2",
    0x1C: "ecschnorr",
    0x15: "rsaes",
    0x17: "oaep",
}
_KDF_SCHEMES = {0x07: "mgf1", 0x20: "kdf1_sp800_56a", 0x21: "kdf2", 0x22: "kdf1_sp800_108"}
_CAPS = {
    0: "algorithms",
    1: "handles",
    2: "command",
    3: "ppCommands",
    4: "auditCommands",
    5: "assignedPCR",
    6: "tpmProperties",
    7: "pcrProperties",
    8: "eccCurves",
    9: "authPolicies",
    10: "actData",
}
_ATTESTS = {
    0x8017: "certify",
    0x801A: "creation",
    0x8018: "quote",
    0x8015: "commandAudit",
    0x8016: "sessionAudit",
    0x8019: "time",
    0x8014: "nv",
}


def _pick(table: dict[int, str]) -> Callable[[int], str | None]:
    return table.get


def _sym_bits(alg: int) -> str | None:
    return "sym" if alg in _SYM_CIPHERS else "exclusiveOr" if alg == _XOR else None


def _sym_mode(alg: int) -> str | None:
    return "sym" if alg in _SYM_CIPHERS else None


def _public(member: dict[int, str]) -> Callable[[int], str | None]:
    return member.get


# union type -> (selector member of the enclosing structure, selector value -> member)
_UNIONS: dict[str, tuple[str, Callable[[int], str | None]]] = {
    "TPMU_HA": ("hashAlg", _pick(_HASH_MEMBER)),
    "TPMU_CAPABILITIES": ("capability", _pick(_CAPS)),
    "TPMU_ATTEST": ("type", _pick(_ATTESTS)),
    "TPMU_SYM_KEY_BITS": ("algorithm", _sym_bits),
    "TPMU_SYM_MODE": ("algorithm", _sym_mode),
    "TPMU_SCHEME_KEYEDHASH": ("scheme", _pick({_HMAC: "hmac", _XOR: "exclusiveOr"})),
    "TPMU_SIG_SCHEME": ("scheme", _pick(_SIG_SCHEMES)),
    "TPMU_KDF_SCHEME": ("scheme", _pick(_KDF_SCHEMES)),
    "TPMU_ASYM_SCHEME": ("scheme", _pick(_ASYM_SCHEMES)),
    "TPMU_SIGNATURE": ("sigAlg", _pick(_SIG_SCHEMES)),
    "TPMU_PUBLIC_PARMS": (
        "type",
        _public(
            {
                _KEYEDHASH: "keyedHashDetail",
                _SYMCIPHER: "symDetail",
                _RSA: "rsaDetail",
                _ECC: "eccDetail",
            }
        ),
    ),
    "TPMU_PUBLIC_ID": (
        "type",
        _public({_KEYEDHASH: "keyedHash", _SYMCIPHER: "sym", _RSA: "rsa", _ECC: "ecc"}),
    ),
    "TPMU_SENSITIVE_COMPOSITE": (
        "sensitiveType",
        _public({_RSA: "rsa", _ECC: "ecc", _KEYEDHASH: "bits", _SYMCIPHER: "sym"}),
    ),
}
# TPM2B byte buffers whose contents are a structure (Part 2), decoded inside.
_WRAPPED = {"TPM2B_ATTEST": "TPMS_ATTEST", "TPM2B_TEMPLATE": "TPMT_PUBLIC"}


class FieldError(ValueError):
    """The unmarshalled value does not fit the layout rules (a union selector we do not
    know, for instance)."""


def _cname(ctype: Any) -> str:
    return str(ctype.cname).removeprefix("struct ").removeprefix("union ")


@cache
def _const_class(name: str) -> Any:
    return getattr(C, name, None)


_PT_FIXED = [
    "FAMILY_INDICATOR",
    "LEVEL",
    "REVISION",
    "DAY_OF_YEAR",
    "YEAR",
    "MANUFACTURER",
    "VENDOR_STRING_1",
    "VENDOR_STRING_2",
    "VENDOR_STRING_3",
    "VENDOR_STRING_4",
    "VENDOR_TPM_TYPE",
    "FIRMWARE_VERSION_1",
    "FIRMWARE_VERSION_2",
    "INPUT_BUFFER",
    "HR_TRANSIENT_MIN",
    "HR_PERSISTENT_MIN",
    "HR_LOADED_MIN",
    "ACTIVE_SESSIONS_MAX",
    "PCR_COUNT",
    "PCR_SELECT_MIN",
    "CONTEXT_GAP_MAX",
    "-",
    "NV_COUNTERS_MAX",
    "NV_INDEX_MAX",
    "MEMORY",
    "CLOCK_UPDATE",
    "CONTEXT_HASH",
    "CONTEXT_SYM",
    "CONTEXT_SYM_SIZE",
    "ORDERLY_COUNT",
    "MAX_COMMAND_SIZE",
    "MAX_RESPONSE_SIZE",
    "MAX_DIGEST",
    "MAX_OBJECT_CONTEXT",
    "MAX_SESSION_CONTEXT",
    "PS_FAMILY_INDICATOR",
    "PS_LEVEL",
    "PS_REVISION",
    "PS_DAY_OF_YEAR",
    "PS_YEAR",
    "SPLIT_MAX",
    "TOTAL_COMMANDS",
    "LIBRARY_COMMANDS",
    "VENDOR_COMMANDS",
    "NV_BUFFER_MAX",
    "MODES",
    "MAX_CAP_BUFFER",
    "FIRMWARE_SVN",
    "FIRMWARE_MAX_SVN",
]
_PT_VAR = [
    "PERMANENT",
    "STARTUP_CLEAR",
    "HR_NV_INDEX",
    "HR_LOADED",
    "HR_LOADED_AVAIL",
    "HR_ACTIVE",
    "HR_ACTIVE_AVAIL",
    "HR_TRANSIENT_AVAIL",
    "HR_PERSISTENT",
    "HR_PERSISTENT_AVAIL",
    "NV_COUNTERS",
    "NV_COUNTERS_AVAIL",
    "ALGORITHM_SET",
    "LOADED_CURVES",
    "LOCKOUT_COUNTER",
    "MAX_AUTH_FAIL",
    "LOCKOUT_INTERVAL",
    "LOCKOUT_RECOVERY",
    "NV_WRITE_RECOVERY",
    "AUDIT_COUNTER_0",
    "AUDIT_COUNTER_1",
]
# TPM_PT (Part 2 6.13): pytss's TPM2_PT lacks most of these or names them by aliases.
_PT_NAMES = {0x100 + i: n for i, n in enumerate(_PT_FIXED) if n != "-"} | {
    0x200 + i: n for i, n in enumerate(_PT_VAR)
}


@lru_cache(maxsize=4096)  # bounded: some named types (handles, properties) have many values
def enum_text(type_name: str, value: int) -> str | None:
    """The constant name of `value` in pytss's constants class `type_name`
    ("TPM2_CAP_PCRS"), the `|`-joined flags of a TPMA_ bit field, or None."""
    if type_name == "TPM2_PT" and value in _PT_NAMES:
        return "TPM2_PT_" + _PT_NAMES[value]
    if type_name == "TPM2_RC" and value == 0:
        return "TPM2_RC_SUCCESS"  # pytss names 0 by an alias
    cls = _const_class(type_name)
    if cls is None or not issubclass(cls, C.TPM_FRIENDLY_INT):
        return None
    if type_name in _PLAIN_BITS:  # pytss gives these no flag names
        names = [n for bit, n in _PLAIN_BITS[type_name] if value & bit]
        rest = value & ~sum(bit for bit, _ in _PLAIN_BITS[type_name])
        return "|".join(names + ([f"0x{rest:x}"] if rest else [])) or "0"
    if issubclass(cls, C.TPMA_FRIENDLY_INTLIST):
        try:
            return str(cls(value)) or "0"
        except (ValueError, TypeError, KeyError):
            return None
    try:
        text = str(cls.to_string(value))
    except (ValueError, TypeError, KeyError):
        return None
    prefix, _, constant = text.partition(".")
    return f"{_PREFIX.get(prefix, prefix)}_{constant}"


# pytss class -> the prefix of the C constant names (tss2_tpm2_types.h)
_PREFIX = {"TPM2_ALG_ID": "TPM2_ALG", "TPMI_YES_NO": "TPM2", "TPM2_ECC_CURVE": "TPM2_ECC"}


# TPMA_ALGORITHM (Part 2 8.2): a plain TPM_FRIENDLY_INT in pytss, str() is the number
_PLAIN_BITS = {
    "TPMA_ALGORITHM": (
        (0x1, "asymmetric"),
        (0x2, "symmetric"),
        (0x4, "hash"),
        (0x8, "object"),
        (0x100, "signing"),
        (0x200, "encrypting"),
        (0x400, "method"),
    )
}


@cache
def _is_bits(type_name: str) -> bool:
    if type_name in _PLAIN_BITS:
        return True
    cls = _const_class(type_name)
    return cls is not None and isinstance(cls, type) and issubclass(cls, C.TPMA_FRIENDLY_INTLIST)


@cache
def _int_kind(type_name: str) -> tuple[Kind, bool]:
    """(INT or BITS, whether its values have names): once per type."""
    kind = Kind.BITS if _is_bits(type_name) else Kind.INT
    cls = _const_class(type_name)
    named = (
        type_name in _PLAIN_BITS
        or type_name in ("TPM2_PT", "TPM2_RC")
        or (isinstance(cls, type) and issubclass(cls, C.TPM_FRIENDLY_INT))
    )
    return kind, named


_NEW = tuple.__new__  # Field(...) without NamedTuple's Python-level __new__: the hot path
_getattribute = object.__getattribute__


def int_field(name: str, type_name: str, offset: int, size: int, value: int) -> Field:
    kind, named = _int_kind(type_name)
    text = enum_text(type_name, value) if named else None
    return _NEW(Field, (name, type_name, offset, size, kind, value, text, (), False, False))


# A layout is a list of member specs, computed once per structure type:
# (name, kind tag, ctype, type name, size or 0)
_Spec = tuple[str, str, Any, str, int]


@cache
def _layout(ctype: Any) -> tuple[str, tuple[_Spec, ...]]:
    """(shape, members) of a C structure: shape is "tpm2b", "tpm2b_struct", "tpml",
    "select" (sizeofSelect + pcrSelect), "ha" (TPMT_HA), "empty" or "struct"."""
    sname = _cname(ctype)
    members = []
    for name, f in ctype.fields:
        t = f.type
        if t.kind == "primitive":
            tn = _EXTRA_TYPES.get((sname, name)) or _type_map.get((sname, name))
            tn = tn or _INT_NAMES[t.cname]
            members.append((name, "int", t, tn, ffi.sizeof(t)))
        elif t.kind == "array":
            members.append((name, "array", t, _cname(t.item), 0))
        elif t.kind == "union":
            members.append((name, "union", t, _cname(t), 0))
        else:
            members.append((name, "struct", t, _cname(t), 0))
    names = [m[0] for m in members]
    if sname == "TPMS_EMPTY":
        shape = "empty"
    elif sname == "TPMT_HA":
        shape = "ha"
    elif names[:1] == ["size"] and len(members) == 2:
        shape = "tpm2b" if members[1][1] == "array" else "tpm2b_struct"
    elif names[:1] == ["count"] and len(members) == 2 and members[1][1] == "array":
        shape = "tpml"
    elif "sizeofSelect" in names:
        shape = "select"
    else:
        shape = "struct"
    return shape, tuple(members)


def walk(cdata: Any, ctype: Any, name: str, offset: int, type_name: str | None = None) -> Field:
    """The field tree of one C structure value at `offset` of the message."""
    tn = type_name or _cname(ctype)
    shape, members = _layout(ctype)
    if shape == "tpm2b":
        n = cdata.size
        buf = ffi.buffer(getattr(cdata, members[1][0]))[0:n]
        carried = _WRAPPED.get(tn)
        if carried is not None and n:
            wrapped = _wrapped(buf, carried, members[1][0], offset + 2)
            if wrapped is not None:
                size = Field("size", "UINT16", offset, 2, Kind.INT, n)
                return Field(name, tn, offset, 2 + n, Kind.STRUCT, None, None, (size, wrapped))
        return Field(name, tn, offset, 2 + n, Kind.BYTES, buf)
    if shape == "tpm2b_struct":
        n = cdata.size
        size = Field("size", "UINT16", offset, 2, Kind.INT, n)
        if n == 0:
            return Field(name, tn, offset, 2, Kind.STRUCT, None, None, (size,))
        mname, _, mtype, _, _ = members[1]
        inner = walk(getattr(cdata, mname), mtype, mname, offset + 2)
        if inner.size != n:
            raise FieldError(f"{tn}.size {n} but its {mname} takes {inner.size}")
        return Field(name, tn, offset, 2 + n, Kind.STRUCT, None, None, (size, inner))
    if shape == "tpml":
        count = cdata.count
        aname, _, atype, item, _ = members[1]
        arr = getattr(cdata, aname)
        head = Field("count", "UINT32", offset, 4, Kind.INT, count)
        off = offset + 4
        elems = []
        if atype.item.kind == "primitive":
            et = _element_type_map.get(tn) or _INT_NAMES[atype.item.cname]
            isz = ffi.sizeof(atype.item)
            for i in range(count):
                elems.append(int_field(f"[{i}]", et, off, isz, arr[i]))
                off += isz
        else:
            for i in range(count):
                e = walk(arr[i], atype.item, f"[{i}]", off)
                elems.append(e)
                off += e.size
        lst = Field(
            aname, item + "[]", offset + 4, off - offset - 4, Kind.LIST, None, None, tuple(elems)
        )
        return Field(name, tn, offset, off - offset, Kind.STRUCT, None, None, (head, lst))
    if shape == "empty":
        return Field(name, tn, offset, 0, Kind.STRUCT)
    if shape == "ha":
        alg = cdata.hashAlg
        head = int_field("hashAlg", "TPM2_ALG", offset, 2, alg)
        if alg == _NULL:
            return Field(name, tn, offset, 2, Kind.STRUCT, None, None, (head,))
        n = _DIGEST_SIZES.get(alg)
        if n is None:
            raise FieldError(f"{tn}: unknown hash algorithm 0x{alg:04x}")
        buf = ffi.buffer(ffi.addressof(cdata, "digest"), n)[:]
        dig = Field("digest", "TPMU_HA", offset + 2, n, Kind.BYTES, buf)
        return Field(name, tn, offset, 2 + n, Kind.STRUCT, None, None, (head, dig))
    children: list[Field] = []
    values: dict[str, int] = {}
    off = offset
    for mname, kind, mtype, mtn, msize in members:
        if kind == "int":
            v = getattr(cdata, mname)
            values[mname] = v
            children.append(int_field(mname, mtn, off, msize, v))
            off += msize
        elif kind == "array":  # pcrSelect[sizeofSelect]
            n = values.get("sizeofSelect", 0)
            buf = ffi.buffer(getattr(cdata, mname))[0:n]
            children.append(Field(mname, "BYTE[]", off, n, Kind.BYTES, buf))
            off += n
        elif kind == "union":
            f = _union(getattr(cdata, mname), mtype, mname, mtn, off, values, tn)
            if f is not None:
                children.append(f)
                off += f.size
        else:
            f = walk(getattr(cdata, mname), mtype, mname, off)
            children.append(f)
            off += f.size
    return Field(name, tn, offset, off - offset, Kind.STRUCT, None, None, tuple(children))


def _union(
    cdata: Any, utype: Any, name: str, utn: str, offset: int, values: dict[str, int], parent: str
) -> Field | None:
    rule = _UNIONS.get(utn)
    if rule is None:
        raise FieldError(f"{parent}.{name}: no selector rule for {utn}")
    sel_name, pick = rule
    sel = values.get(sel_name)
    if sel is None:
        raise FieldError(f"{parent}.{name}: selector {sel_name} not seen")
    member = pick(sel)
    if member is None:
        if sel in (_NULL, 0x8000) or utn in ("TPMU_SYM_MODE", "TPMU_SYM_KEY_BITS"):
            return None  # TPM_ALG_NULL (or a selector with an empty member): nothing
        if utn == "TPMU_SCHEME_KEYEDHASH" or utn == "TPMU_KDF_SCHEME":
            return None
        raise FieldError(f"{parent}.{name}: {utn} has no member for 0x{sel:x}")
    mtype = _member_types(utype)[member]
    if mtype.kind == "primitive":
        tn = _type_map.get((utn, member)) or _INT_NAMES[mtype.cname]
        return int_field(name, tn, offset, ffi.sizeof(mtype), getattr(cdata, member))
    if mtype.kind == "array":  # TPMU_HA inside TPMT_HA is handled there
        raise FieldError(f"{parent}.{name}: unexpected array member")
    f = walk(getattr(cdata, member), mtype, name, offset)
    if f.size == 0 and f.kind is Kind.STRUCT and not f.children:
        return None
    return f


@cache
def _member_types(utype: Any) -> dict[str, Any]:
    return {n: f.type for n, f in utype.fields}


def _wrapped(buf: bytes, inner: str, name: str, offset: int) -> Field | None:
    """Decode a TPM2B's bytes as the structure they carry, if they are exactly one."""
    from tpm2_pytss import types as T

    cls = getattr(T, inner, None)
    if cls is None:
        return None
    try:
        obj, used = cls.unmarshal(bytes(buf))
    except Exception:
        return None
    if used != len(buf):
        return None
    return value_field(inner_name(inner, name), obj, offset)


def inner_name(inner: str, name: str) -> str:
    return {"TPMS_ATTEST": "attestationData", "TPMT_PUBLIC": "publicArea"}.get(inner, name)


def value_field(name: str, value: Any, offset: int) -> Field:
    """One top-level handle or parameter as pytss unmarshalled it."""
    if isinstance(value, TPM_OBJECT):
        cdata = _getattribute(value, "_cdata")  # not pytss's wrapping __getattribute__
        ctype = ffi.typeof(cdata)
        if ctype.kind == "pointer":
            cdata, ctype = cdata[0], ctype.item
        return walk(cdata, ctype, name, offset, type(value).__name__)
    if isinstance(value, int):
        cls = type(value).__name__
        wire = getattr(type(value), "_alias_name", None) or cls
        return int_field(name, _SHOWN_AS.get(cls, cls), offset, ffi.sizeof(wire), int(value))
    raise FieldError(f"{name}: cannot lay out {type(value).__name__}")


# our gap-filling classes (codec/tpm.py) are shown as the pytss constants they extend
_SHOWN_AS = {"TPM2_CLOCK_ADJUST": "TPM2_CLOCK", "TPMI_ECC_CURVE": "TPM2_ECC_CURVE"}

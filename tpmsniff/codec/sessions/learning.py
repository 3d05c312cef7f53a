"""Learning from a successful exchange: sessions that start and end, policy-session state,
Names, where loaded objects came from, and the authValues that crossed readable."""

from __future__ import annotations

from tpm2_pytss.constants import TPM2_CC

from ...model import TPM_RS_PW, TpmInfo
from ..authvalues import (
    CC_CREATE,
    CC_CREATE_LOADED,
    CC_CREATE_PRIMARY,
    CC_HIERARCHY_CHANGE_AUTH,
    CC_NV_CHANGE_AUTH,
    CC_NV_DEFINE,
    CC_OBJECT_CHANGE_AUTH,
    sensitive_auth,
)
from .handles import HIERARCHIES, auth_handle_count
from .proof import Check
from .table import Pending, SessionTable

CC_FLUSH, CC_CONTEXT_SAVE = TPM2_CC.FlushContext, TPM2_CC.ContextSave
CC_LOAD, CC_LOAD_EXTERNAL, CC_CONTEXT_LOAD = TPM2_CC.Load, TPM2_CC.LoadExternal, TPM2_CC.ContextLoad
CC_POLICY_AUTH_VALUE, CC_POLICY_PASSWORD, CC_POLICY_RESTART = (
    TPM2_CC.PolicyAuthValue,
    TPM2_CC.PolicyPassword,
    TPM2_CC.PolicyRestart,
)
POLICY_STATE = {CC_POLICY_AUTH_VALUE: "authvalue", CC_POLICY_PASSWORD: "password"}
LOADS = (CC_CREATE_PRIMARY, CC_LOAD, CC_LOAD_EXTERNAL, CC_CONTEXT_LOAD, CC_CREATE_LOADED)


def learn_auth(
    table: SessionTable, cmd: TpmInfo, rsp: TpmInfo, pend: Pending, checks: dict[int, Check]
) -> None:
    """authValues that crossed readable in this (successful) exchange."""
    book, names = table.book, table.names
    cc = cmd.cc
    for r in pend.readable:
        if cc in (CC_CREATE_PRIMARY, CC_CREATE_LOADED) and r.field.endswith("userAuth"):
            h = rsp.handles[0] if rsp.handles else None
            book.learn(r.value, f"{cmd.name} userAuth", h, names.name(h) if h else None)
        elif cc == CC_CREATE and r.field.endswith("userAuth") and len(rsp.params) >= 2:
            name = bytes(rsp.params[1].get_name())
            book.learn(r.value, "Create userAuth", None, name)
        elif cc in (CC_HIERARCHY_CHANGE_AUTH, CC_NV_CHANGE_AUTH) and cmd.handles:
            book.set_handle(r.value, f"{cmd.name} newAuth", cmd.handles[0])
        elif cc == CC_OBJECT_CHANGE_AUTH and cmd.handles and "newAuth" in r.field:
            book.learn(r.value, "ObjectChangeAuth newAuth", None, names.name(cmd.handles[0]))
        elif cc == CC_NV_DEFINE and len(cmd.params) >= 2 and r.field.endswith(" auth"):
            index = int(cmd.params[1].nvPublic.nvIndex)
            book.learn(r.value, "NV_DefineSpace auth", index, names.name(index))
        elif cc == CC_LOAD_EXTERNAL and rsp.handles and r.field.endswith("inPrivate"):
            auth = sensitive_auth(r.value)
            if auth:
                h = rsp.handles[0]
                book.learn(auth, "LoadExternal authValue", h, names.name(h))
    k = auth_handle_count(cc, len(cmd.handles))
    for i, s in enumerate(cmd.sessions[:k]):
        entity = cmd.handles[i]
        password = s.handle == TPM_RS_PW or (s.facts is not None and s.facts.policy == "password")
        if password and s.auth:
            book.learn(s.auth, "password session", entity, names.name(entity))
        c = checks.get(i)
        if c is not None and c.status == "ok" and c.value is not None and c.value.auth_in_hmac:
            proven = c.value.auth
            if proven is not None and proven[0]:
                book.learn(proven[0], proven[1], entity, names.name(entity))


def learn(table: SessionTable, cmd: TpmInfo, rsp: TpmInfo, pend: Pending) -> None:
    """Sessions, policy state, Names and object provenance after a successful exchange."""
    cc = cmd.cc
    if cc is not None:
        table.names.on_success(cc, cmd.handles, cmd.params, rsp.handles, rsp.params)
    if cc in (CC_POLICY_AUTH_VALUE, CC_POLICY_PASSWORD, CC_POLICY_RESTART) and cmd.handles:
        st = table.sessions.get(cmd.handles[0])
        if st is not None:
            st.policy = POLICY_STATE.get(cc, "")
    if pend.start is not None and rsp.handles:
        nonce_tpm = bytes(rsp.params[0]) if rsp.params else b""
        table.start(pend.start, rsp.handles[0], nonce_tpm)
    elif cc == CC_CONTEXT_SAVE and cmd.handles and rsp.params:
        table.objects.saved(cmd.handles[0], _blob(rsp.params[0]))
    elif cc == CC_FLUSH and cmd.params:
        h = int(cmd.params[0])
        table.sessions.pop(h, None)
        table.objects.flushed(h)
        table.book.forget(h)
    elif cc in LOADS and rsp.handles:
        h = rsp.handles[0]
        if cc != CC_CONTEXT_LOAD or h >> 24 not in (0x02, 0x03):
            table.book.forget(h)  # a new object in a reused handle
        if cc == CC_CREATE_PRIMARY and cmd.handles:
            where = HIERARCHIES.get(cmd.handles[0], f"0x{cmd.handles[0]:08x}")
            table.objects.loaded(h, f"primary key in {where} hierarchy")
        elif cc == CC_CONTEXT_LOAD:
            if h >> 24 in (0x02, 0x03):
                return  # a session's context came back: same handle, same session
            table.objects.context_loaded(h, _blob(cmd.params[0]) if cmd.params else b"")
        elif cc == CC_LOAD_EXTERNAL:
            table.objects.loaded(h, "external key (LoadExternal)")
        else:
            parent = table.objects.origin(cmd.handles[0]) if cmd.handles else "?"
            table.objects.loaded(h, f"loaded key under {parent}")


def _blob(context: object) -> bytes:
    """The contextBlob of a TPMS_CONTEXT (empty if it has none)."""
    try:
        return bytes(context.contextBlob)  # type: ignore[attr-defined]
    except Exception:
        return b""

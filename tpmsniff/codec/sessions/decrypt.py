"""Decryption of a first parameter with a session key an observer can compute (WEAK)."""

from __future__ import annotations

import structlog

from ...model import TpmInfo
from ..paramcrypt import HASHES, decrypt_param
from .table import SessionState

log = structlog.get_logger("tpmsniff.sessions")


def decrypt_first(
    info: TpmInfo,
    msg: bytes,
    idx: int,
    st: SessionState,
    session_value: bytes,
    cmd: TpmInfo | None,
) -> bytes | None:
    """The plaintext of `info`'s first parameter, encrypted by session `idx` with the
    parameter key `session_value`; `cmd` is the command of a response (None: a command)."""
    p = info.param
    if p.offset is None or not p.size or st.auth_hash not in HASHES:
        return None
    data = msg[p.offset + 2 : p.offset + 2 + p.size]
    if cmd is None:
        newer, older = info.sessions[idx].nonce, st.nonce_tpm
    else:
        caller = cmd.sessions[idx].nonce if idx < len(cmd.sessions) else st.nonce_caller
        newer, older = info.sessions[idx].nonce, caller
    try:
        return decrypt_param(
            sym_alg=st.sym_alg,
            key_bits=st.key_bits,
            mode=st.mode,
            hash_alg=st.auth_hash,
            session_value=session_value,
            nonce_newer=newer,
            nonce_older=older,
            data=data,
        )
    except Exception as exc:  # a crypto error must not stop annotation
        log.debug("weak-session decryption failed", error=repr(exc))
        return None

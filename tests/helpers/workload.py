"""The tpm2-tools workload: getrandom, createprimary, seal, load, unseal,
flushcontext, nvdefine/nvwrite/nvread. Returns what a user would compare."""

from __future__ import annotations

from pathlib import Path

from conftest import run_tool

SECRET = b"tpmsniff-secret-42"
NV_DATA = b"nv-data-0123456789"
NV_INDEX = "0x1500016"


def tools_seal_unseal(t, secret: bytes = SECRET) -> bytes:
    """createprimary, create (seal), load, unseal with tpm2-tools' defaults, flushing
    transient objects after each step (no resource manager in front of swtpm).
    `t(*args, input=None)` runs one tool and returns its stdout."""
    t("tpm2_createprimary", "-Q", "-C", "o", "-c", "prim.ctx")
    t("tpm2_flushcontext", "-t")
    t(
        "tpm2_create",
        "-Q",
        "-C",
        "prim.ctx",
        "-i",
        "-",
        "-u",
        "seal.pub",
        "-r",
        "seal.priv",
        input=secret,
    )
    t("tpm2_flushcontext", "-t")
    t("tpm2_load", "-Q", "-C", "prim.ctx", "-u", "seal.pub", "-r", "seal.priv", "-c", "seal.ctx")
    t("tpm2_flushcontext", "-t")
    out = t("tpm2_unseal", "-c", "seal.ctx")
    t("tpm2_flushcontext", "-t")
    return out


def tpm2tools_workload(tcti: str, cwd: Path) -> dict[str, object]:
    cwd.mkdir(parents=True, exist_ok=True)

    def t(*args: str, input: bytes | None = None) -> bytes:
        return run_tool(list(args), tcti, cwd, input).stdout

    out: dict[str, object] = {}
    out["getrandom_len"] = len(t("tpm2_getrandom", "16"))
    out["unseal"] = tools_seal_unseal(t)
    t(
        "tpm2_nvdefine",
        "-Q",
        "-C",
        "o",
        "-s",
        str(len(NV_DATA)),
        "-a",
        "ownerread|ownerwrite",
        NV_INDEX,
    )
    t("tpm2_nvwrite", "-Q", "-C", "o", "-i", "-", NV_INDEX, input=NV_DATA)
    out["nvread"] = t("tpm2_nvread", "-C", "o", "-s", str(len(NV_DATA)), NV_INDEX)
    t("tpm2_nvundefine", "-Q", "-C", "o", NV_INDEX)
    return out

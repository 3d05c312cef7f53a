"""pytest plugin (entry point `pytest11`): put tpmsniff in front of a TPM in your tests.

    def test_seal_is_encrypted(tpmsniff_proxy):
        tpm = tpmsniff_proxy("/run/swtpm.sock")          # swtpm --server socket
        run_my_code(tcti=tpm.tcti)                       # e.g. "swtpm:path=/tmp/.../tpm.sock"
        tpm.assert_no_plaintext(b"my-disk-key")
        tpm.assert_encrypted("Unseal")                   # direction implied: response

The relay runs in-process (its own event loop in a thread) and collects every annotated
frame; `tpm.pcap` is an annotated capture of the test. This module imports nothing heavy:
tpmsniff and tpm2-pytss load only when a test uses the fixture.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .sniffed import SniffedTPM


@pytest.fixture
def tpmsniff_proxy(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., SniffedTPM]]:
    """Factory fixture: `tpmsniff_proxy(upstream, pcap=True, auth=None)` -> SniffedTPM."""
    from .sniffed import SniffedTPM

    started: list[SniffedTPM] = []

    def start(upstream: str, **kw: Any) -> SniffedTPM:
        tpm = SniffedTPM(upstream, tmp_path_factory.mktemp("tpmsniff"), **kw)
        started.append(tpm)
        return tpm

    yield start
    for tpm in started:
        tpm.stop()

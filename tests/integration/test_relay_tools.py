"""tpm2-tools through tpmsniff against real swtpm, over TCP and Unix sockets.

Ground truth is swtpm's own `--log level=2` dump: every message in the pcapng must equal
what swtpm logged, byte for byte and in order. tshark must decode every TPM frame.
"""

from __future__ import annotations

import pytest
from conftest import start_sniff, start_swtpm
from helpers.captured import messages
from helpers.fieldcheck import check_capture
from helpers.groundtruth import log_sequence, tshark_fields
from helpers.workload import NV_DATA, SECRET, tpm2tools_workload

from tpmsniff.inputs.pcapng import read_pcapng
from tpmsniff.model import CTRL_PORT

pytestmark = pytest.mark.integration


@pytest.fixture(
    scope="module",
    params=[("tcp", "python"), ("unix", "python"), ("tcp", "native"), ("unix", "native")],
    ids=lambda p: "-".join(p),
)
def run(request, tmp_path_factory):
    """One workload through tpmsniff and one direct, on two fresh swtpms, for each
    transport and each relay path (--relay python|native)."""
    kind, relay = request.param
    tmp = tmp_path_factory.mktemp(f"relay-{kind}-{relay}")
    direct_tpm = start_swtpm(tmp, kind, "direct")
    sniffed_tpm = start_swtpm(tmp, kind, "sniffed")
    sniff = start_sniff(tmp, sniffed_tpm.data, extra=["--console", "hexdump", "--relay", relay])
    try:
        direct = tpm2tools_workload(direct_tpm.tcti, tmp / "w-direct")
        through = tpm2tools_workload(sniff.tcti, tmp / "w-sniff")
    finally:
        rc = sniff.stop()
        direct_tpm.stop()
        sniffed_tpm.stop()
    yield {"direct": direct, "through": through, "sniff": sniff, "swtpm": sniffed_tpm, "rc": rc}


def test_same_results_as_direct(run):
    assert run["rc"] == 0
    assert run["through"] == run["direct"]
    assert run["through"]["unseal"] == SECRET
    assert run["through"]["nvread"] == NV_DATA


def test_capture_equals_swtpm_log(run):
    captured = messages(str(run["sniff"].pcap))
    logged = log_sequence(run["swtpm"].log)
    assert len(logged) > 40
    assert captured == logged


def test_ctrl_channel_equals_swtpm_log(run):
    captured = messages(str(run["sniff"].pcap), port=CTRL_PORT)
    logged = log_sequence(run["swtpm"].log, tpm=False)
    assert logged, "the swtpm TCTI sends SET_LOCALITY on its control channel"
    assert captured == logged


def test_tshark_decodes_every_message(run):
    pcap = run["sniff"].pcap
    n_tpm = len(messages(str(pcap)))
    reqs = tshark_fields(pcap, "tpm.req.cc", filt="tpm.req.cc")
    rsps = tshark_fields(pcap, "tpm.resp.rc", filt="tpm.resp.rc")
    assert len(reqs) == len(rsps) == n_tpm // 2
    # The only warnings allowed are Wireshark's own NV_Read bug (it expects 1 handle, the
    # spec has 2); our comment on those frames carries the right decode.
    bad = tshark_fields(
        pcap, "frame.number", "tpm.req.cc", filt="_ws.malformed || _ws.expert.severity >= warning"
    )
    assert all(cc == "0x0000014e" for _, cc in bad), bad
    # every frame carries a comment, and ours match what tshark shows
    frames = list(read_pcapng(str(pcap)))
    comments = tshark_fields(pcap, "frame.comment")
    assert len(comments) == len(frames)
    assert all(c[0] for c in comments)
    assert all(f.comment for f in frames)


def test_every_field_decodes_exactly(run):
    counts = check_capture(str(run["sniff"].pcap))
    assert counts["messages"] > 50 and counts["errors"] == counts["header_only"] == 0
    counts = check_capture(str(run["swtpm"].log))  # and the same from swtpm's own log
    assert counts["messages"] > 50 and counts["errors"] == counts["header_only"] == 0


def test_capture_file_is_private(run):
    assert (run["sniff"].pcap.stat().st_mode & 0o777) == 0o600


def test_console_marks_plaintext_unseal(run):
    text = run["sniff"].console()
    assert ">>> Command: Create (tag=0x8002" in text
    assert "<<< Response to Unseal: rc=0x00000000 (tag=0x8002" in text
    unseal = text[text.index("<<< Response to Unseal") :].split("\n\n")[0]
    assert "[PLAINTEXT]" in unseal
    assert "TPM2B_SENSITIVE_DATA" in unseal
    assert SECRET.hex(" ", 1)[:20] in unseal or "tpmsniff-secre" in unseal


def test_ready_event_logged_once(run):
    events = [e for e in run["sniff"].log_events() if e.get("event") == "ready"]
    assert len(events) == 1

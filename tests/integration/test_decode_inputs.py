"""`tpmsniff decode`/`check` on inputs made by real tools (issue #5).

For every input the decoded messages must equal what swtpm logged, byte for byte and in
order, and the command codes must equal what tshark reports (`tpm.req.cc`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import dpkt
import pytest
from conftest import (
    ROOT,
    require,
    run_tool,
    start_sniff,
    start_swtpm,
    tpmsniff_cmd,
    wait_consumed,
    wait_for,
)
from helpers.fieldcheck import check_capture
from helpers.groundtruth import log_sequence, tshark_fields
from helpers.workload import SECRET, tpm2tools_workload

from tpmsniff.codec.annotate import Annotator
from tpmsniff.inputs import frames_from_input
from tpmsniff.inputs.capture import ip_packet
from tpmsniff.inputs.pcapng import read_pcapng
from tpmsniff.model import Channel, Direction

pytestmark = pytest.mark.integration
GETRANDOM = bytes.fromhex("80010000000c0000017b0010")


def decode(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*tpmsniff_cmd(), "decode", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


def decoded(path, channel=Channel.TPM) -> list[tuple[bool, bytes]]:
    return [
        (f.direction is Direction.COMMAND, f.raw)
        for f in frames_from_input(str(path), Annotator())
        if f.channel is channel
    ]


def jsonl(path, *extra) -> list[dict]:
    p = decode(path, "--output", "jsonl", *extra)
    assert p.returncode == 0, p.stderr
    return [json.loads(line) for line in p.stdout.splitlines()]


class Tshark:
    """tshark capturing loopback traffic of some ports, as a user would run it."""

    def __init__(self, out: Path, ports: list[int], iface: str = "lo", fmt: str = "pcapng"):
        self.out = out
        self.fmt = fmt
        filt = " or ".join(f"tcp port {p}" for p in ports)
        self.proc = subprocess.Popen(
            [require("tshark"), "-i", iface, "-f", filt, "-F", fmt, "-w", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        buf = b""
        end = time.monotonic() + 30
        while b"Capturing on" not in buf and time.monotonic() < end:
            buf += os.read(self.proc.stderr.fileno(), 4096)
        # "Capturing on" comes before packets really flow (on "any" noticeably so): knock
        # on the first port (an empty connection, which decodes to nothing) until the
        # knock is in the file
        self.port = ports[0]
        for _ in range(20):
            with contextlib.suppress(TimeoutError):
                self._knock(2)
                return
        raise TimeoutError(f"tshark on {iface} captured nothing")

    def _knock(self, timeout: float) -> None:
        """An empty connection to the first port; returns once it is in the file, closed.
        Packets are written in order, so everything before it is in the file too."""
        with socket.create_connection(("127.0.0.1", self.port)) as s:
            me = s.getsockname()[1]
        wait_for(lambda: self._all_streams_closed(me), timeout, f"{self.out.name} to be written")

    def _packets(self) -> list[tuple[int, bytes]] | None:
        """(linktype, bytes) of every packet in the file so far, None while unreadable."""
        try:
            if self.fmt == "pcapng":
                return [(p.linktype, p.data) for p in read_pcapng(str(self.out))]
            with open(self.out, "rb") as fh:
                r = dpkt.pcap.Reader(fh)
                return [(r.datalink(), buf) for _, buf in r]
        except Exception:  # not yet created, or the last block is still being written
            return None

    def _all_streams_closed(self, port: int) -> bool:
        """The stream from client `port` is in the file, and every TCP stream in the file
        has a FIN (or RST) in both directions."""
        opened, closed = set(), set()
        packets = self._packets()
        if packets is None:
            return False
        for linktype, data in packets:
            try:
                ip = ip_packet(linktype, data)
            except dpkt.dpkt.Error:  # dpkt's pcap Reader hands on a half-written last packet
                return False
            if ip is None or not isinstance(ip.data, dpkt.tcp.TCP):
                continue
            t = ip.data
            key = (ip.src, t.sport, ip.dst, t.dport)
            opened.add(key)
            if t.flags & (dpkt.tcp.TH_FIN | dpkt.tcp.TH_RST):
                closed.add(key)
                if t.flags & dpkt.tcp.TH_RST:
                    closed.add((ip.dst, t.dport, ip.src, t.sport))
        return any(k[1] == port for k in opened) and opened <= closed

    def stop(self) -> None:
        """Stop once everything the (finished) workload sent is in the file."""
        self._knock(30)
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)


@pytest.fixture(scope="module")
def tools_run(tmp_path_factory):
    """The tpm2-tools workload straight to swtpm (TCP), captured three ways at once:
    tcti-pcap, tshark on lo (pcapng), tshark on any (classic pcap); swtpm logs at level 2."""
    tmp = tmp_path_factory.mktemp("inputs")
    sw = start_swtpm(tmp, "tcp", "sw", log_opts="level=20,prefix=[id=7]", low_port=True)
    port = int(sw.data.rsplit(":", 1)[1])
    lo = Tshark(tmp / "lo.pcapng", [port, port + 1])
    anyif = Tshark(tmp / "any.pcap", [port, port + 1], iface="any", fmt="pcap")
    os.environ["TCTI_PCAP_FILE"] = str(tmp / "tcti.pcapng")
    try:
        tpm2tools_workload(f"pcap:{sw.tcti}", tmp / "w")
    finally:
        del os.environ["TCTI_PCAP_FILE"]
        lo.stop()
        anyif.stop()
        sw.stop()
    return tmp, sw


def test_every_input_kind_decodes_field_by_field_exactly(tools_run):
    tmp, sw = tools_run
    for path in (tmp / "tcti.pcapng", tmp / "lo.pcapng", tmp / "any.pcap", sw.log):
        counts = check_capture(str(path))
        assert counts["messages"] > 50 and counts["errors"] == counts["header_only"] == 0, path


def test_tcti_pcap_capture(tools_run):
    tmp, sw = tools_run
    path = tmp / "tcti.pcapng"
    assert {p.linktype for p in read_pcapng(str(path))} == {228}
    assert decoded(path) == log_sequence(sw.log)
    rows = jsonl(path)
    ccs = [r["cc"] for r in rows if r["direction"] == "command" and r["channel"] == "tpm"]
    assert [f"0x{c:08x}" for c in ccs] == [
        r[0] for r in tshark_fields(path, "tpm.req.cc", filt="tpm.req.cc")
    ]
    for key in (
        "file",
        "frame",
        "stream",
        "channel",
        "direction",
        "cc",
        "command",
        "sessions",
        "param",
    ):
        assert all(key in r for r in rows if r["channel"] == "tpm"), key
    assert all("rc" in r for r in rows if r["direction"] == "response")


@pytest.mark.parametrize("name", ["lo.pcapng", "any.pcap"])
def test_tshark_loopback_captures(tools_run, name):
    tmp, sw = tools_run
    path = tmp / name
    assert decoded(path) == log_sequence(sw.log)
    assert decoded(path, Channel.CTRL) == log_sequence(sw.log, tpm=False)
    ccs = [
        f"0x{r['cc']:08x}"
        for r in jsonl(path)
        if r["direction"] == "command" and r["channel"] == "tpm"
    ]
    port = int(sw.data.rsplit(":", 1)[1])
    assert ccs == [
        r[0] for r in tshark_fields(path, "tpm.req.cc", filt="tpm.req.cc", tpm_port=port)
    ]


def test_swtpm_logs_level_2_and_20_with_prefix(tools_run, tmp_path):
    tmp, sw = tools_run
    text = sw.log.read_text()  # level 20: libtpms debug lines interleaved
    assert text.startswith("[id=7]") and "SWTPM_IO_Read" in text
    assert decoded(sw.log) == decoded(tmp / "tcti.pcapng")  # the log is the capture's twin
    rows = jsonl(sw.log)
    assert {r["channel"] for r in rows} == {"tpm", "ctrl"}
    assert [r for r in rows if "error" in r] == []
    sw2 = start_swtpm(tmp_path, "unix", "l2", log_opts="level=2,prefix=vm42: ")
    try:
        run_tool(["tpm2_getrandom", "8"], sw2.tcti, tmp_path)
    finally:
        sw2.stop()
    assert sw2.log.read_text().startswith("vm42: ")
    cmds = [r["command"] for r in jsonl(sw2.log) if r["channel"] == "tpm"]
    assert cmds == ["GetCapability", "GetCapability", "GetRandom", "GetRandom"]


def test_check_works_on_every_input_kind(tools_run):
    tmp, sw = tools_run
    for path in (tmp / "tcti.pcapng", tmp / "lo.pcapng", tmp / "any.pcap", sw.log):
        p = subprocess.run(
            [*tpmsniff_cmd(), "check", str(path), "--secret", SECRET.decode()],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
        assert p.returncode == 1, (path, p.stdout, p.stderr)  # tpm2-tools defaults leak it
        assert "Unseal response" in p.stdout and "Create command" in p.stdout


def test_split_and_coalesced_segments_are_reassembled(tmp_path):
    """A raw client splits a command (6+6 bytes, which swtpm accepts) and speaks MS-sim,
    whose response (length, message, ack) arrives in one segment."""
    sw = start_swtpm(tmp_path, "tcp")
    port = int(sw.data.rsplit(":", 1)[1])
    cap = Tshark(tmp_path / "split.pcapng", [port])
    try:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(GETRANDOM[:6])
            wait_consumed(s)  # swtpm has read it: the two parts are two segments
            s.sendall(GETRANDOM[6:])
            s.settimeout(5)
            assert len(s.recv(100)) == 28
            s.sendall(b"\0\0\0\x08\x00\0\0\0\x0c" + GETRANDOM)
            rsp = b""
            while len(rsp) < 36:
                rsp += s.recv(100)
    finally:
        cap.stop()
        sw.stop()
    segs = tshark_fields(cap.out, "tcp.len", filt="tcp.len > 0")
    assert ["6"] in segs and ["6"] in [s for s in segs]  # the split really is on the wire
    # swtpm logs MS-sim responses without their length prefix and ack trailer
    msgs = [
        (f.direction is Direction.COMMAND, f.raw if f.direction is Direction.COMMAND else f.message)
        for f in frames_from_input(str(cap.out), Annotator())
    ]
    assert msgs == log_sequence(sw.log)
    rows = jsonl(cap.out)
    assert [r["command"] for r in rows] == ["GetRandom"] * 4
    assert [r["framing"] for r in rows] == ["raw", "raw", "mssim", "mssim"]


def test_qemu_boot_log_has_control_blocks(tmp_path):
    """A swtpm log of a SeaBIOS boot through QEMU: control blocks decode as control."""
    from helpers.qemu import CtrlSwtpm, boot

    sw = CtrlSwtpm(tmp_path / "sw")
    sniff = start_sniff(tmp_path, sw.sock, extra=["--console", "summary"])
    try:
        boot(sniff, boots=1)
        sw.proc.wait(10)
    finally:
        sniff.stop()
        sw.stop()
    rows = jsonl(sw.log)
    ctrl = [r["command"] for r in rows if r["channel"] == "ctrl"]
    assert ctrl[:2] == ["CMD_SET_DATAFD", "CMD_SET_DATAFD"] and "CMD_INIT" in ctrl
    assert "PCR_Extend" in [r["command"] for r in rows if r["channel"] == "tpm"]
    # and the daemon's own capture decodes to the same messages
    assert decoded(sniff.pcap) == decoded(sw.log)
    assert decoded(sniff.pcap, Channel.CTRL) == decoded(sw.log, Channel.CTRL)


def write_pcap(path: Path, linktype: int, packets: list[bytes], ng: bool = False) -> None:
    with open(path, "wb") as fh:
        w = (
            dpkt.pcapng.Writer(fh, linktype=linktype)
            if ng
            else dpkt.pcap.Writer(fh, linktype=linktype)
        )
        for i, p in enumerate(packets):
            w.writepkt(p, ts=1000.0 + i)


def tcp_ip(
    src_port: int, dst_port: int, seq: int, payload: bytes, flags=dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK
):
    tcp = dpkt.tcp.TCP(sport=src_port, dport=dst_port, seq=seq, flags=flags, data=payload)
    ip = dpkt.ip.IP(src=b"\x7f\0\0\x01", dst=b"\x7f\0\0\x01", p=6, data=tcp)
    ip.len = 20 + len(tcp)
    return ip


def test_swtpm_pcap_and_log_to_pcap_layouts(tmp_path):
    """Layouts of swtpm --pcap (Ethernet, data segments with flags 0, client port 50000-54999)
    and henryreed/swtpm-log-to-pcap (raw IPv4, 50000<->2321, bare ACKs): swtpm 0.7.1 and
    Debian lack both tools, so these files are built here to their documented layout."""
    rsp = bytes.fromhex("8001000000140000000000080102030405060708")
    eth = lambda ip: bytes(dpkt.ethernet.Ethernet(src=b"\0" * 6, dst=b"\0" * 6, data=ip))  # noqa: E731
    swtpm_pcap = [
        eth(tcp_ip(51234, 2321, 100, GETRANDOM, flags=0)),
        eth(tcp_ip(2321, 51234, 900, rsp, flags=0)),
    ]
    write_pcap(tmp_path / "swtpm.pcapng", 1, swtpm_pcap, ng=True)
    hr = [
        bytes(tcp_ip(50000, 2321, 5, b"", dpkt.tcp.TH_SYN)),
        bytes(tcp_ip(2321, 50000, 77, b"", dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK)),
        bytes(tcp_ip(50000, 2321, 6, GETRANDOM)),
        bytes(tcp_ip(2321, 50000, 78, b"", dpkt.tcp.TH_ACK)),
        bytes(tcp_ip(2321, 50000, 78, rsp)),
        bytes(tcp_ip(50000, 2321, 18, b"", dpkt.tcp.TH_ACK)),
    ]
    write_pcap(tmp_path / "hr.pcap", 101, hr)
    for name in ("swtpm.pcapng", "hr.pcap"):
        assert decoded(tmp_path / name) == [(True, GETRANDOM), (False, rsp)], name


def test_bad_inputs(tmp_path):
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(os.urandom(200))
    for bad, words in ((garbage, "not a pcap"), (tmp_path / "missing", "No such file")):
        p = decode(bad)
        assert p.returncode == 2 and words in p.stderr and str(bad) in p.stderr
        assert len(p.stderr.strip().splitlines()) == 1
    user0 = tmp_path / "user0.pcap"
    write_pcap(user0, 147, [b"\x00\x00\x00\x01"])
    p = decode(user0)
    assert p.returncode == 2 and "unsupported link type 147" in p.stderr
    # a file that is partly good: its good messages and a warning
    good = tmp_path / "good.pcap"
    write_pcap(good, 101, [bytes(tcp_ip(50000, 2321, 1, GETRANDOM))] * 1)
    data = good.read_bytes()
    partial = tmp_path / "partial.pcap"
    partial.write_bytes(data + data[24:][:20])  # a second record cut short
    p = decode(partial)
    assert p.returncode == 0 and "GetRandom" in p.stdout and "partly unreadable" in p.stderr
    truncated = tmp_path / "truncated.pcapng"
    PcapOut = tmp_path / "t.pcapng"
    write_pcap(PcapOut, 1, [], ng=True)
    truncated.write_bytes(PcapOut.read_bytes()[:-5])
    assert decode(truncated).returncode == 2


def test_decode_writes_annotated_pcapng(tools_run, tmp_path):
    _tmp, sw = tools_run
    out = tmp_path / "from-log.pcapng"
    p = decode(sw.log, "--pcap", out)
    assert p.returncode == 0
    assert [
        c for _, c in [(None, x) for x in tshark_fields(out, "frame.comment")] if not c[0]
    ] == []
    assert decoded(out) == log_sequence(sw.log)


def test_multiple_inputs_in_order(tools_run):
    tmp, sw = tools_run
    rows = jsonl(tmp / "tcti.pcapng", sw.log)
    files = [r["file"] for r in rows]
    assert files == sorted(files, key=lambda f: 0 if f.endswith("tcti.pcapng") else 1)
    assert files[0].endswith("tcti.pcapng") and files[-1] == str(sw.log)

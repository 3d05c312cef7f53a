"""What the relay must survive and still do right, against real swtpm."""

from __future__ import annotations

import concurrent.futures
import contextlib
import socket

import pytest
from conftest import (
    connect,
    recv_exact,
    run_tool,
    start_sniff,
    start_swtpm,
    wait_consumed,
    wait_for,
)
from helpers.captured import messages

from tpmsniff.inputs.pcapng import read_pcapng
from tpmsniff.inputs.swtpmlog import parse_file

pytestmark = pytest.mark.integration

GETRANDOM = bytes.fromhex("80010000000c0000017b0010")


def read_response(s: socket.socket) -> bytes:
    head = recv_exact(s, 10)
    return head + recv_exact(s, int.from_bytes(head[2:6], "big") - 10)


def tpm_log(sw) -> list[bytes]:
    return [m.data for m in parse_file(str(sw.log)) if m.kind == "tpm-cmd"]


@pytest.fixture(params=["python", "native"])
def pair(request, tmp_path):
    """swtpm and tpmsniff, for each relay path (--relay python|native)."""
    sw = start_swtpm(tmp_path, "tcp")
    sniff = start_sniff(tmp_path, sw.data, extra=["--console", "summary", "--relay", request.param])
    yield sw, sniff
    sniff.stop()
    sw.stop()


def test_split_command_reaches_swtpm_in_one_piece(pair):
    """A command split after 11 bytes fails against bare swtpm (0x142); not through us."""
    sw, sniff = pair
    with connect(sniff.listen) as s:
        s.sendall(GETRANDOM[:11])
        wait_consumed(s)  # tpmsniff has read the first part on its own
        s.sendall(GETRANDOM[11:])
        rsp = read_response(s)
    assert int.from_bytes(rsp[6:10], "big") == 0 and len(rsp) == 10 + 2 + 16
    assert tpm_log(sw)[-1] == GETRANDOM


def test_pipelined_commands_are_sent_one_at_a_time(pair):
    """Two commands in one write would be one 24-byte command to swtpm; we serialise them."""
    sw, sniff = pair
    with connect(sniff.listen) as s:
        s.sendall(GETRANDOM + GETRANDOM)
        r1, r2 = read_response(s), read_response(s)
    assert r1[6:10] == r2[6:10] == b"\0\0\0\0"
    assert tpm_log(sw)[-2:] == [GETRANDOM, GETRANDOM]


def test_mssim_framing_relayed_and_decoded(pair):
    """MS-sim prefix sent as a separate write (as the mssim TCTI does), locality 3."""
    sw, sniff = pair
    prefix = (8).to_bytes(4, "big") + b"\x03" + len(GETRANDOM).to_bytes(4, "big")
    with connect(sniff.listen) as s:
        s.sendall(prefix)
        wait_consumed(s)
        s.sendall(GETRANDOM)
        size = int.from_bytes(recv_exact(s, 4), "big")
        rsp = recv_exact(s, size)
        ack = recv_exact(s, 4)
    assert ack == b"\0\0\0\0" and rsp[6:10] == b"\0\0\0\0"
    assert tpm_log(sw)[-1] == prefix + GETRANDOM  # swtpm got prefix+command in one read
    sniff.stop()
    assert messages(str(sniff.pcap))[-2:] == [
        (True, prefix + GETRANDOM),
        (False, size.to_bytes(4, "big") + rsp + ack),
    ]
    comments = [p.comment for p in read_pcapng(str(sniff.pcap))]
    assert any("cmd GetRandom loc=3" in c and "mssim" in c for c in comments)


def test_garbage_client_is_relayed_and_next_client_served(pair):
    _sw, sniff = pair
    with connect(sniff.listen) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(3)
        with contextlib.suppress(TimeoutError, ConnectionError):
            s.recv(100)  # swtpm answers or closes; either way nothing hangs
    with connect(sniff.listen) as s:
        s.sendall(GETRANDOM)
        assert read_response(s)[6:10] == b"\0\0\0\0"
    assert sniff.proc.poll() is None
    sniff.stop()
    assert any("unframed" in (p.comment or "") for p in read_pcapng(str(sniff.pcap)))


def test_premature_eof_mid_command(pair):
    _sw, sniff = pair
    with connect(sniff.listen) as s:
        s.sendall(GETRANDOM[:5])
    with connect(sniff.listen) as s:
        s.sendall(GETRANDOM)
        assert read_response(s)[6:10] == b"\0\0\0\0"


def test_many_concurrent_short_lived_clients(pair, tmp_path):
    _sw, sniff = pair

    def one(i: int) -> int:
        return len(run_tool(["tpm2_getrandom", "8"], sniff.tcti, tmp_path).stdout)

    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        sizes = list(ex.map(one, range(24)))
    assert sizes == [8] * 24
    sniff.stop()
    cmds = [m for m in messages(str(sniff.pcap)) if m[0]]
    assert len(cmds) >= 48  # GetCapability + GetRandom each


@pytest.mark.parametrize("relay", ["python", "native"])
def test_upstream_gone_closes_client_daemon_survives(tmp_path, relay):
    sw = start_swtpm(tmp_path, "tcp")
    sniff = start_sniff(tmp_path, sw.data, extra=["--listen-ctrl", "none", "--relay", relay])
    try:
        sw.stop()
        with connect(sniff.listen) as s:
            s.settimeout(5)
            s.sendall(GETRANDOM)
            assert s.recv(10) == b""  # closed by tpmsniff
        wait_for(lambda: "upstream connect failed" in sniff.stderr.read_text(), 5, "log event")
        assert sniff.proc.poll() is None
    finally:
        assert sniff.stop() == 0


def test_password_session_unseal_marked_plaintext(tmp_path):
    """ESAPI with password sessions: the authValue and the unsealed secret go in clear."""
    from tpm2_pytss import ESAPI, TCTILdr
    from tpm2_pytss.constants import TPMA_OBJECT
    from tpm2_pytss.types import (
        TPM2B_AUTH,
        TPM2B_PUBLIC,
        TPM2B_SENSITIVE_CREATE,
        TPM2B_SENSITIVE_DATA,
        TPMS_SENSITIVE_CREATE,
    )

    sw = start_swtpm(tmp_path, "unix")
    sniff = start_sniff(tmp_path, sw.data, extra=["--console", "hexdump"])
    try:
        e = ESAPI(TCTILdr("swtpm", f"path={sniff.listen}"))
        prim, *_ = e.create_primary(
            TPM2B_SENSITIVE_CREATE(),
            TPM2B_PUBLIC.parse(
                "rsa2048", objectAttributes=TPMA_OBJECT.DEFAULT_TPM2_TOOLS_CREATEPRIMARY_ATTRS
            ),
        )
        sens = TPM2B_SENSITIVE_CREATE(
            TPMS_SENSITIVE_CREATE(
                userAuth=TPM2B_AUTH(b"pw-123"), data=TPM2B_SENSITIVE_DATA(b"s3cret-key")
            )
        )
        pub = TPM2B_PUBLIC.parse(
            "keyedhash",
            objectAttributes=TPMA_OBJECT.USERWITHAUTH
            | TPMA_OBJECT.FIXEDTPM
            | TPMA_OBJECT.FIXEDPARENT,
        )
        priv, pub2, *_ = e.create(prim, sens, pub)
        h = e.load(prim, priv, pub2)
        e.tr_set_auth(h, b"pw-123")
        assert bytes(e.unseal(h)) == b"s3cret-key"
        e.close()
    finally:
        sniff.stop()
        sw.stop()
    text = sniff.console()
    unseal_cmd = text[text.index(">>> Command: Unseal") :].split("<<<")[0]
    assert "PW:- authValue(6B) IN CLEAR" in unseal_cmd
    unseal_rsp = text[text.index("<<< Response to Unseal") :].split("\n\n")[0]
    assert "[PLAINTEXT]" in unseal_rsp and "s3cret-key" in unseal_rsp
    create = text[text.index(">>> Command: Create ") :].split("<<<")[0]
    assert "TPM2B_SENSITIVE_CREATE" in create and "[PLAINTEXT]" in create


@pytest.mark.parametrize("relay", ["python", "native"])
def test_flood_loses_no_frame_and_swtpm_closing_is_passed_on(tmp_path, relay):
    """Thousands of commands, as fast as the client can, pipelined four deep: every one
    is answered, and the capture holds every command and response byte for byte as
    swtpm logged them (backpressure slows the client; nothing is dropped)."""
    sw = start_swtpm(tmp_path, "unix", log_opts="level=2")
    sniff = start_sniff(tmp_path, sw.data, extra=["--console", "hexdump", "--relay", relay])
    n = 3000
    try:
        with connect(sniff.listen) as s:
            for _ in range(n // 4):
                s.sendall(GETRANDOM * 4)  # four at once: relayed one at a time
                for _ in range(4):
                    assert read_response(s)[6:10] == b"\0\0\0\0"
    finally:
        assert sniff.stop() == 0
        sw.stop()
    logs = parse_file(str(sw.log))
    logged = [(m.kind == "tpm-cmd", m.data) for m in logs if m.kind in ("tpm-cmd", "tpm-rsp")]
    assert messages(str(sniff.pcap)) == logged
    assert len(logged) == 2 * n

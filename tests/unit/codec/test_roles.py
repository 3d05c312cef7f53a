import pytest

from tpmsniff.codec.roles import detect_role


@pytest.mark.parametrize(
    "first,fds,unix,role",
    [
        (b"\x00\x00\x00\x10", [5], True, "qemu"),  # QEMU: SET_DATAFD with its socketpair end
        (
            b"\x00\x00\x00\x10",
            [],
            True,
            "qemu",
        ),  # fd missing: still QEMU's channel (swtpm says 0x03)
        (bytes.fromhex("80010000000c0000017b0008"), [], True, "data"),
        (bytes.fromhex("00c10000000a000000f1"), [], False, "data"),  # TPM 1.2 probe
        (bytes.fromhex("00000008000000000c"), [], False, "data"),  # MS-sim header
        (b"\x00\x00\x00\x08", [], True, "ctrl"),  # exactly 4 bytes: CMD_HASH_END
        (b"\x00\x00\x00\x05\x00", [], False, "ctrl"),  # TSS SET_LOCALITY
        (b"\x00\x00\x00\x01", [], True, "ctrl"),  # swtpm_ioctl GET_CAPABILITY
        (b"GET / HTTP/1.1\r\n", [], False, "data"),  # garbage: relayed, recorded unframed
    ],
)
def test_auto_detection(first, fds, unix, role):
    assert detect_role(first, fds, "auto", unix) == role


def test_mode_overrides():
    assert detect_role(b"\x80\x01", [], "qemu", True) == "qemu"
    assert detect_role(b"\x00\x00\x00\x10", [3], "swtpm", True) == "data"

"""Canaries for the private APIs tpmsniff relies on (pinned with upper bounds in
pyproject.toml). If one of these fails after an upgrade, decoding would silently drop to
header-only or misread captures: fix the codec before raising the pin."""

from __future__ import annotations

import struct
from typing import get_args, get_origin

from dpkt import pcapng
from tpm2_pytss import command_parser as cp
from tpm2_pytss.constants import TPM2_CC, TPMA_SESSION

from tpmsniff.codec.tpm import _param_types


def test_dpkt_epb_fixed_header_layout():
    """inputs/pcapng.py unpacks EPBs with dpkt's own header format, minus type/len/options."""
    hdr = pcapng.EnhancedPacketBlock.__hdr_fmt__
    assert hdr == ">IIIIIIII", hdr
    assert pcapng.EnhancedPacketBlock.__hdr_len__ == 32
    assert struct.calcsize("<" + hdr[1:-1]) == 28  # type len iface ts_hi ts_lo caplen pktlen


def test_pytss_set_encrypted_parameter_marks_first_tpm2b():
    """codec/tpm.py relies on `_set_encrypted_parameter` to type an encrypted first parameter."""
    types = _param_types(int(TPM2_CC.Create), True)
    encrypted = [a for a in get_args(types[0]) if get_origin(a) is cp.TPM_ENCRYPTED_PARAMETER]
    assert encrypted, "Create's inSensitive is no longer marked encryptable"
    sess = cp.tpm2_command_session(
        0x02000000, cp.TPM2B_NONCE(b"n" * 16), TPMA_SESSION.DECRYPT, cp.TPM2B_AUTH(b"")
    )
    with_flag = cp._set_encrypted_parameter(types, [sess], TPMA_SESSION.DECRYPT)
    assert get_origin(with_flag[0]) is cp.TPM_ENCRYPTED_PARAMETER
    plain = cp._set_encrypted_parameter(types, [], TPMA_SESSION.DECRYPT)
    assert plain[0] is cp.TPM2B_SENSITIVE_CREATE
    assert tuple(with_flag[1:]) == tuple(types[1:])


def test_pytss_parser_entry_points_exist():
    for name in ("read_and_unmarshal", "read_command_sessions", "tpm2_response_session"):
        assert hasattr(cp, name), name
    cls = cp.tpm2_command.lookup_command_class(int(TPM2_CC.GetRandom))
    assert cls.num_handles() == 0
    assert cp.tpm2_response.lookup_response_class(int(TPM2_CC.Load)).has_handle()


def test_model_constants_match_pytss():
    """model/ imports nothing, so it keeps the one wire constant it needs as a literal."""
    from tpm2_pytss.constants import TPM2_RH

    from tpmsniff.model import TPM_RS_PW

    assert int(TPM2_RH.PW) == TPM_RS_PW

"""The tpm2-pytss API tpmsniff's codec relies on, some of it private (pyproject pins
tpm2-pytss <3.1 for this reason). If an upgrade changes any of it, this fails loudly
here rather than as "decode failed" annotations in the field."""

from __future__ import annotations

import inspect
from typing import get_args, get_origin

from tpm2_pytss import command_parser as cp
from tpm2_pytss.constants import TPM2_CLOCK, TPM2_ECC, TPMA_SESSION
from tpm2_pytss.internal.type_mapping import _element_type_map, _type_map
from tpm2_pytss.types import TPM2B_SENSITIVE_CREATE, ffi

from tpmsniff.codec import tpm
from tpmsniff.codec.part3 import NAMES


def test_private_command_parser_api_is_as_used():
    assert list(inspect.signature(cp._set_encrypted_parameter).parameters) == [
        "parameters",
        "sessions",
        "session_flag",
    ]
    assert list(inspect.signature(cp.read_and_unmarshal).parameters) == ["data", "args"]
    create = cp.tpm2_command.lookup_command_class(0x153)
    types = create.parameter_types()
    # the first parameter is Union[T, TPM_ENCRYPTED_PARAMETER[T]]; the flag picks one
    enc = [a for a in get_args(types[0]) if get_origin(a) is cp.TPM_ENCRYPTED_PARAMETER]
    assert enc and get_args(enc[0]) == (TPM2B_SENSITIVE_CREATE,)
    plain = cp._set_encrypted_parameter(types, (), TPMA_SESSION.DECRYPT)
    assert plain[0] is TPM2B_SENSITIVE_CREATE
    sess = cp.tpm2_command_session(
        0x02000000, cp.TPM2B_NONCE(b"n" * 16), TPMA_SESSION.DECRYPT, cp.TPM2B_AUTH(b"")
    )
    flagged = cp._set_encrypted_parameter(types, [sess], TPMA_SESSION.DECRYPT)
    assert get_origin(flagged[0]) is cp.TPM_ENCRYPTED_PARAMETER
    assert tuple(flagged[1:]) == tuple(types[1:])
    assert cp.tpm2_command.num_handles.__func__ and create.num_handles() == 1
    assert cp.tpm2_response.lookup_response_class(0x153).has_handle() is False
    assert hasattr(cp, "read_command_sessions") and hasattr(cp, "tpm2_response_session")


def test_type_maps_and_cffi_layouts_are_as_used():
    assert _type_map[("TPMT_PUBLIC", "objectAttributes")] == "TPMA_OBJECT"
    assert _element_type_map["TPML_CC"] == "TPM2_CC"
    names = [n for n, _ in ffi.typeof("TPMT_PUBLIC").fields]
    assert names == ["type", "nameAlg", "objectAttributes", "authPolicy", "parameters", "unique"]


def test_gaps_we_fill_are_still_gaps():
    """When pytss fixes one of these, drop our filler (codec/tpm.py) and this line."""
    for name in ("TPM2_CLOCK", "TPM2_ECC"):
        try:
            ffi.sizeof(name)
        except ffi.error:
            continue
        raise AssertionError(f"pytss now has a C type {name}: drop tpmsniff's filler")
    assert TPM2_CLOCK in tpm._TYPE_FIX and TPM2_ECC in tpm._TYPE_FIX
    assert len(cp.tpm2_command.lookup_command_class(0x17F).parameter_types()) == 1  # PolicyPCR
    assert cp.tpm2_response.lookup_response_class(0x181).parameter_types() == ()  # ReadClock


def test_every_pytss_command_has_part3_names():
    for cc in cp.tpm2_command._commands_:
        assert cc in NAMES, hex(cc)
        handles, params, rhandles, rparams = NAMES[cc]
        assert len(handles) == cp.tpm2_command.lookup_command_class(cc).num_handles()
        assert len(params) == len(tpm._param_types(cc, True)), tpm.cc_name(cc)
        assert len(rhandles) == int(cp.tpm2_response.lookup_response_class(cc).has_handle())
        assert len(rparams) == len(tpm._param_types(cc, False)), tpm.cc_name(cc)


def test_model_constants_match_pytss():
    """model/ imports nothing, so it keeps the one wire constant it needs as a literal."""
    from tpm2_pytss.constants import TPM2_RH

    from tpmsniff.model import TPM_RS_PW

    assert int(TPM2_RH.PW) == TPM_RS_PW

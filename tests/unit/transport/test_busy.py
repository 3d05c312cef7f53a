"""`busy` (what a stop waits for) is a request outstanding, not an open connection."""

from __future__ import annotations

from tpmsniff.codec.channels import CtrlChannel, DataChannel

GETRANDOM = bytes.fromhex("80010000000c0000017b0010")
RESPONSE = bytes.fromhex("80010000000c00000000") + b"\x00\x00"


def test_data_channel_waits_from_request_to_whole_response():
    ch = DataChannel()
    assert not ch.waiting  # open, idle
    ch.from_client(GETRANDOM)
    assert ch.waiting
    ch.from_server(RESPONSE[:7])
    assert ch.waiting  # part of the response only
    ch.from_server(RESPONSE[7:])
    assert not ch.waiting


def test_data_channel_server_eof_ends_the_wait():
    ch = DataChannel()
    ch.from_client(GETRANDOM)
    ch.server_eof()
    assert not ch.waiting


def test_ctrl_channel_waits_for_its_reply():
    ch = CtrlChannel()
    assert not ch.waiting
    ch.from_client((1).to_bytes(4, "big"))  # CMD_GET_CAPABILITY
    assert ch.waiting
    ch.from_server(b"\0\0\0\0" + b"\0\0\0\0")
    assert not ch.waiting

"""Control channel framing and decoding, with messages as observed on the wire
(docs/protocols.md §7)."""

from __future__ import annotations

from tpmsniff.codec.channels import CtrlChannel
from tpmsniff.codec.ctrl import CtrlRequestFramer, decode_request, decode_response, response_length


def h(s: str) -> bytes:
    return bytes.fromhex(s.replace(" ", ""))


def test_set_locality_tss_and_qemu_forms():
    f = CtrlRequestFramer()
    assert f.feed(h("00000005")) == ([], [])
    writes, done = f.feed(h("00"))
    assert writes == [h("00000005 00")]
    writes, done = CtrlRequestFramer().feed(h("00000005 02000000"))
    assert writes == [h("0000000502000000")]
    assert decode_request(done[0].raw).fields == {"locality": 2}


def test_split_request_is_forwarded_whole():
    f = CtrlRequestFramer()
    assert f.feed(h("0000000c 00000001"))[0] == []
    writes, done = f.feed(h("00000002 00000000"))
    assert writes == [h("0000000c 00000001 00000002 00000000")]
    info = decode_request(done[0].raw)
    assert info.name == "GET_STATEBLOB" and info.fields["blob"] == "volatile"


def test_set_stateblob_header_then_streamed_body():
    body = bytes(range(256)) * 40
    hdr = h("0000000d 00000000 00000001") + len(body).to_bytes(4, "big")
    f = CtrlRequestFramer()
    w1, d1 = f.feed(hdr)
    assert w1 == [hdr] and d1 == []
    w2, _d2 = f.feed(body[:5000])
    w3, d3 = f.feed(body[5000:] + h("00000002 00000001"))
    assert b"".join(w1 + w2 + w3) == hdr + body + h("00000002 00000001")
    assert d3[0].raw == hdr + body
    assert decode_request(d3[1].raw).fields == {"flags": 1, "delete_volatile": True}


def test_response_lengths():
    assert response_length(0x01, h("00000000 0000ffff")) == 8
    assert response_length(0x11, h("00000000")) == 16
    assert response_length(0x11, h("0000000a")) == 4
    assert response_length(0x0C, h("00000800 00000000 00000000 00000000")) == 16
    assert response_length(0x0C, h("00000000 00000000 00000529 00000529")) == 16 + 0x529
    assert response_length(0x12, h("00000000 00000096 00000096")) == 12 + 0x96


def test_channel_pairs_replies_with_requests():
    ch = CtrlChannel()
    _, ev = ch.from_client(h("00000011 00000000"))
    assert ev[0].ctrl_cmd == 0x11
    _, ev = ch.from_server(h("00000000 00001000 00000af8"))
    assert ev == []
    _, ev = ch.from_server(h("00001000"))
    info = decode_response(ev[0].ctrl_cmd, ev[0].message.raw)
    assert info.fields == {"buffersize": 4096, "minsize": 2808, "maxsize": 4096}
    _, ev = ch.from_client(h("00000001"))
    _, ev = ch.from_server(h("00000000 0000ffff"))
    assert decode_response(0x01, ev[0].message.raw).fields == {"caps": "0xffff"}

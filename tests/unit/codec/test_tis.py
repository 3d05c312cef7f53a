"""codec/tis.py: register accesses -> TPM messages by the header's size, localities
apart, and a warning with its time for everything that does not add up."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tpmsniff.codec.tis import Access, BusMessage, BusWarning, TisAssembler
from tpmsniff.model import Direction


def msg(body: bytes, tag: int = 0x8001, code: int = 0x17B) -> bytes:
    size = 10 + len(body)
    return tag.to_bytes(2, "big") + size.to_bytes(4, "big") + code.to_bytes(4, "big") + body


def run(accesses: list[Access]) -> tuple[list[BusMessage], list[BusWarning]]:
    tis = TisAssembler()
    out = [o for a in accesses for o in tis.feed(a)] + list(tis.finish())
    return (
        [o for o in out if isinstance(o, BusMessage)],
        [o for o in out if isinstance(o, BusWarning)],
    )


def fifo(write: bool, data: bytes, loc: int = 0, ts: float = 0.0) -> Access:
    return Access(ts, write, loc, 0x24, data, f"t{ts}")


def sts(value: int, loc: int = 0) -> Access:
    return Access(0.0, True, loc, 0x18, bytes([value]))


def test_one_command_and_response_in_chunks() -> None:
    c, r = msg(b"\x00\x08"), msg(b"\x00\x08" + b"R" * 8, code=0)
    got, warns = run(
        [sts(0x40), fifo(True, c[:3], ts=1.0), fifo(True, c[3:], ts=2.0), sts(0x20)]
        + [fifo(False, r[i : i + 5], ts=3.0 + i) for i in range(0, len(r), 5)]
        + [sts(0x40)]
    )
    assert [(m.direction, m.raw, m.ts) for m in got] == [
        (Direction.COMMAND, c, 1.0),
        (Direction.RESPONSE, r, 3.0),
    ]
    assert warns == []


def test_response_retry_is_not_a_second_response() -> None:
    c, r = msg(b""), msg(b"abc", code=0)
    got, warns = run(
        [fifo(True, c), fifo(False, r), sts(2), fifo(False, r[:4]), sts(2), fifo(False, r)]
    )
    assert [m.raw for m in got] == [c, r] and warns == []


def test_localities_kept_apart_and_switch_mid_message_reported() -> None:
    c0, c3 = msg(b"\x00"), msg(b"\x03")
    got, warns = run([fifo(True, c0[:4], 0), fifo(True, c3, 3, ts=5.0), fifo(True, c0[4:], 0)])
    assert [(m.locality, m.raw) for m in got] == [(3, c3), (0, c0)]
    assert warns and "mid-message" in warns[0].text and warns[0].ts == 5.0
    assert "t=5.000000000s" in warns[0].line()


def test_anomalies_are_warnings() -> None:
    c = msg(b"\x00" * 4)
    _, w = run([fifo(True, c[:12])])
    assert "never completed (12 of 14 bytes)" in w[0].text
    _, w = run([fifo(False, msg(b""))])
    assert "no command" in w[0].text
    _, w = run([fifo(True, c)])
    assert "ends before the last command's response" in w[0].text
    _, w = run([fifo(True, c[:11]), sts(0x40)])
    assert "abandoned" in w[0].text
    _, w = run([fifo(True, b"\x80\x01\x00\x00\x00\x02\x00\x00\x00\x00")])
    assert "not a TPM message" in w[0].text
    _, w = run([fifo(True, c + b"xx"), fifo(False, msg(b"", code=0))])
    assert "2 byte(s) past" in w[0].text


messages = st.lists(st.binary(max_size=80).map(msg), min_size=1, max_size=6)


@settings(max_examples=150, deadline=None)
@given(messages, st.data())
def test_any_chunking_and_sts_polling_gives_exactly_the_messages(
    cmds: list[bytes], data: st.DataObject
) -> None:
    accesses: list[Access] = []
    want: list[bytes] = []
    for c in cmds:
        r = msg(data.draw(st.binary(max_size=80)), code=0)
        for m, write in ((c, True), (r, False)):
            at = 0
            while at < len(m):
                n = data.draw(st.integers(1, 64))
                for _ in range(data.draw(st.integers(0, 2))):
                    accesses.append(Access(0.0, False, 0, 0x18, b"\x90\x01\x00\x00"))
                accesses.append(fifo(write, m[at : at + n]))
                at += n
            if write:
                accesses.append(sts(0x20))
        want += [c, r]
    got, warns = run(accesses)
    assert [m.raw for m in got] == want and warns == []


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.builds(
            Access,
            st.floats(0, 10),
            st.booleans(),
            st.integers(0, 4),
            st.sampled_from([0x00, 0x18, 0x19, 0x24, 0x80, 0xF00, 0x123]),
            st.binary(max_size=70),
        ),
        max_size=60,
    )
)
def test_garbage_never_crashes_and_partial_messages_are_reported(accesses: list[Access]) -> None:
    got, warns = run(accesses)
    for m in got:
        assert len(m.raw) == int.from_bytes(m.raw[2:6], "big")
    written = b"".join(a.data for a in accesses if a.write and a.reg in (0x24, 0x80))
    emitted = b"".join(m.raw for m in got if m.direction is Direction.COMMAND)
    if written and written != emitted:
        assert warns  # bytes that made no whole command are always reported

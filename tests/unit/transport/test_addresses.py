import pytest

from tpmsniff.transport.addresses import Address, AddressError, parse_address


@pytest.mark.parametrize(
    "text,addr",
    [
        ("/run/swtpm.sock", Address("unix", path="/run/swtpm.sock")),
        ("unix:rel.sock", Address("unix", path="rel.sock")),
        ("tcp:127.0.0.1:2321", Address("tcp", host="127.0.0.1", port=2321)),
        ("localhost:2321", Address("tcp", host="localhost", port=2321)),
        ("tcp:[::1]:2321", Address("tcp", host="::1", port=2321)),
        ("sock", Address("unix", path="sock")),
    ],
)
def test_parse(text, addr):
    assert parse_address(text) == addr


@pytest.mark.parametrize("text", ["", "tcp:host", "tcp:h:0", "tcp:h:99999", "unix:"])
def test_bad(text):
    with pytest.raises(AddressError):
        parse_address(text)


def test_companions():
    assert parse_address("tcp:127.0.0.1:2321").companion().port == 2322
    assert parse_address("/x/s").companion().path == "/x/s.ctrl"

"""Guest agent wire protocol: framing, decoding and path validation."""
from pathlib import Path

import pytest

from guest import protocol as P
from services.host_agent.adapters.qemu.procs import sandbox_of

pytestmark = pytest.mark.unit


def test_roundtrip_header_and_binary_payload():
    payload = bytes(range(256)) * 10
    frames = P.Decoder().feed(P.encode({"id": 7, "op": "put", "path": "/a"}, payload))
    assert frames == [({"id": 7, "op": "put", "path": "/a"}, payload)]


def test_decoder_handles_byte_by_byte_and_batched_input():
    stream = b"".join(P.encode({"id": i, "type": "out"}, b"x" * i) for i in range(5))
    dec = P.Decoder()
    got = []
    for b in stream:
        got += dec.feed(bytes([b]))
    assert [h["id"] for h, _ in got] == [0, 1, 2, 3, 4]
    assert [p for _, p in got] == [b"x" * i for i in range(5)]
    assert P.Decoder().feed(stream) == got


def test_incomplete_frame_yields_nothing_until_complete():
    frame = P.encode({"id": 1}, b"abc")
    dec = P.Decoder()
    assert dec.feed(frame[:-1]) == []
    assert dec.feed(frame[-1:]) == [({"id": 1}, b"abc")]


@pytest.mark.parametrize("mutate", [
    lambda f: b"XXX" + f[3:],                       # bad magic
    lambda f: f[:3] + bytes([P.VERSION + 1]) + f[4:],  # unknown version
])
def test_bad_prefix_is_a_protocol_error(mutate):
    with pytest.raises(P.ProtocolError):
        P.Decoder().feed(mutate(P.encode({"id": 1})))


def test_oversized_lengths_rejected_before_buffering():
    prefix = P.PREFIX.pack(P.MAGIC, P.VERSION, P.MAX_HEADER + 1, 0)
    with pytest.raises(P.ProtocolError):
        P.Decoder().feed(prefix)
    prefix = P.PREFIX.pack(P.MAGIC, P.VERSION, 2, P.MAX_PAYLOAD + 1)
    with pytest.raises(P.ProtocolError):
        P.Decoder().feed(prefix)


@pytest.mark.parametrize("header", [b"[1,2]", b"{not json"])
def test_header_must_be_a_json_object(header):
    frame = P.PREFIX.pack(P.MAGIC, P.VERSION, len(header), 0) + header
    with pytest.raises(P.ProtocolError):
        P.Decoder().feed(frame)


def test_encode_refuses_oversized_payload():
    with pytest.raises(P.ProtocolError):
        P.encode({"id": 1}, b"\0" * (P.MAX_PAYLOAD + 1))


@pytest.mark.parametrize("path", ["/", "/tmp", "/tmp/a b/c.txt", "/root/.bashrc"])
def test_valid_paths(path):
    assert P.check_path(path) == path


@pytest.mark.parametrize("path", ["", "tmp/x", "./x", "/tmp/../etc", "/tmp/./x", "/tmp//x",
                                  "//tmp", "/tmp/", "/a\x00b", None, 5, "/" + "a" * 5000])
def test_invalid_paths(path):
    with pytest.raises(P.GuestPathError) as ei:
        P.check_path(path)
    assert isinstance(ei.value, ValueError)
    assert ei.value.code in ("EINVAL", "ENAMETOOLONG")


def test_sandbox_marker_requires_name_and_state_root():
    root = Path("/srv/corral/vms")
    argv = ["/usr/bin/qemu-system-x86_64", "-name", "corral-sb1", "-drive",
            "file=/srv/corral/vms/sb1/overlay.qcow2"]
    assert sandbox_of(argv, root) == "sb1"
    assert sandbox_of(argv, Path("/other")) is None
    assert sandbox_of(["/usr/bin/sleep", "-name", "corral-sb1", "/srv/corral/vms/sb1/"], root) is None
    assert sandbox_of(argv[:1] + ["-name", "other-sb1"] + argv[3:], root) is None

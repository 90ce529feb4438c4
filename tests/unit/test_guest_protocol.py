"""Guest agent wire protocol: framing, decoding and path validation."""
from pathlib import Path

import pytest

from guest import protocol as P
from services.host_agent.adapters.procs import sandbox_of

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


@pytest.mark.parametrize("header", [b"[1,2]", b"{not json", b"[" * 30000 + b"]" * 30000,
                                    b'"a string"'])
def test_a_header_that_is_no_json_object_is_skipped_and_the_stream_goes_on(header):
    frame = P.PREFIX.pack(P.MAGIC, P.VERSION, len(header), 0) + header
    dec = P.Decoder()
    assert dec.feed(frame + P.encode({"id": 2, "type": "ok"})) == [({"id": 2, "type": "ok"}, b"")]
    assert len(dec.skipped) == 1


def test_paths_that_are_not_utf8_travel_as_bytes():
    raw = b"/tmp/caf\xe9-\xff"
    field = P.path_field(raw)
    assert field == {"path_b64": "L3RtcC9jYWbpLf8="}
    back = P.path_arg(field)
    assert back.encode("utf-8", "surrogateescape") == raw
    assert P.path_field("/tmp/café") == {"path": "/tmp/café"}
    with pytest.raises(P.GuestPathError):
        P.path_arg({"path_b64": "not base64!"})
    with pytest.raises(P.GuestPathError):
        P.path_arg({"path_b64": "Li4vZXRj"})  # "../etc": not absolute
    assert P.name_fields("ok") == {"name": "ok"}
    odd = b"x\xff".decode("utf-8", "surrogateescape")
    assert P.name_fields(odd) == {"name": "x\ufffd", "name_b64": "eP8="}


def test_a_big_directory_is_listed_whole_or_truncated_with_a_flag(tmp_path, monkeypatch):
    import json

    from guest import files
    d = tmp_path / "many"
    d.mkdir()
    for i in range(5000):
        (d / f"{'n' * 200}-{i:05d}").touch()
    header, body = files.listing(1, {"path": str(d)})
    entries = json.loads(body)  # in the payload: no 64 KiB header limit to hit
    assert header == {"id": 1, "type": "entries", "count": 5000, "truncated": False}
    assert [e["name"] for e in entries] == sorted(e["name"] for e in entries)
    monkeypatch.setattr(P, "MAX_LIST_BYTES", 100_000)  # cut by size
    header, body = files.listing(2, {"path": str(d)})
    assert header["truncated"] and 0 < header["count"] < 5000 and len(body) <= 100_000
    monkeypatch.setattr(P, "MAX_LIST", 1000)  # cut by count
    header, body = files.listing(3, {"path": str(d)})
    assert header["truncated"] and header["count"] <= 1000
    small = tmp_path / "few"
    small.mkdir()
    (small / "caf\xe9".encode("latin-1").decode("utf-8", "surrogateescape")).touch()
    header, body = files.listing(2, {"path": str(small)})
    [entry] = json.loads(body)
    assert not header["truncated"] and entry["name_b64"] == "Y2Fm6Q=="


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


def test_fs_stat_mkdir_rename_remove(tmp_path):
    from guest import files
    root = tmp_path / "w"
    fs = files.fs
    assert fs(1, {"action": "mkdir", "path": f"{root}/a/b", "parents": True})["entry"]["type"] == "dir"
    assert fs(2, {"action": "mkdir", "path": f"{root}/a/b", "parents": True})["type"] == "ok"
    with pytest.raises(FileExistsError):  # answered EEXIST by the agent's dispatch
        fs(3, {"action": "mkdir", "path": f"{root}/a/b"})
    with pytest.raises(FileNotFoundError):
        fs(4, {"action": "mkdir", "path": f"{root}/x/y"})
    (root / "a" / "f.txt").write_bytes(b"12345")
    e = fs(5, {"action": "stat", "path": f"{root}/a/f.txt"})["entry"]
    assert (e["name"], e["size"], e["type"], e["is_dir"]) == ("f.txt", 5, "file", False)
    assert e["mtime"] > 0 and e["mode"] & 0o777
    (root / "link").symlink_to("a/f.txt")
    e = fs(6, {"action": "stat", "path": f"{root}/link"})["entry"]
    assert (e["type"], e["target"]) == ("symlink", "a/f.txt")
    e = fs(7, {"action": "rename", "path": f"{root}/a/f.txt", "to_path": f"{root}/a/g.txt"})["entry"]
    assert e["name"] == "g.txt" and not (root / "a" / "f.txt").exists()
    with pytest.raises(OSError) as ei:  # ENOTEMPTY
        fs(8, {"action": "remove", "path": f"{root}/a"})
    assert P.errno_code(ei.value) == "ENOTEMPTY"
    assert fs(9, {"action": "remove", "path": f"{root}/link"}) == {"id": 9, "type": "ok"}
    assert (root / "a" / "g.txt").exists()  # a symlink is removed, never followed
    fs(10, {"action": "remove", "path": f"{root}/a", "recursive": True})
    assert not (root / "a").exists()
    with pytest.raises(FileNotFoundError):
        fs(11, {"action": "stat", "path": f"{root}/a"})
    for bad in ({"action": "remove", "path": "/", "recursive": True},
                {"action": "rename", "path": "/", "to_path": "/x"},
                {"action": "chmod", "path": f"{root}"},
                {"action": "rename", "path": f"{root}", "to_path": "rel"},
                {"action": "stat", "path": f"{root}/../etc"}):
        with pytest.raises(P.GuestError) as ge:
            fs(12, bad)
        assert ge.value.code == "EINVAL"

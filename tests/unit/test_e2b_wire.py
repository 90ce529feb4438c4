"""The pieces of the E2B front door that need no stack: Connect framing,
per-sandbox access tokens, paths, entries and multipart uploads."""
import json
import stat

import pytest

from contracts.rpc import HostFileStat
from services.api_gateway.adapters.sealer import Sealer
from services.api_gateway.entrypoints import connect_wire as cw
from services.api_gateway.entrypoints.e2b_routes import _metadata_filter, detail, image_of
from services.api_gateway.entrypoints.envd_common import entry_info, sandbox_path
from services.api_gateway.entrypoints.multipart import form_files as _multipart

pytestmark = pytest.mark.unit


def test_stream_envelopes_round_trip_and_refuse_what_they_must():
    msg = {"process": {"cmd": "/bin/bash", "args": ["-c", "true"]}}
    assert cw.stream_request(cw.envelope(msg)) == msg
    end = cw.end_stream(cw.ConnectError("not_found", "gone"))
    flags, size = cw.ENVELOPE.unpack_from(end)
    assert flags == cw.END_STREAM and json.loads(end[5:5 + size]) == {
        "error": {"code": "not_found", "message": "gone"}}
    assert json.loads(cw.end_stream()[5:]) == {}
    for bad, code in ((b"", "invalid_argument"), (cw.envelope(msg)[:-1], "invalid_argument"),
                      (cw.envelope(msg) + b"x", "invalid_argument"),
                      (bytes([1]) + cw.envelope(msg)[1:], "unimplemented"),
                      (cw.ENVELOPE.pack(0, 2) + b"[]", "invalid_argument"),
                      (cw.ENVELOPE.pack(0, cw.MAX_MESSAGE + 1), "invalid_argument")):
        with pytest.raises(cw.ConnectError) as ei:
            cw.stream_request(bad)
        assert ei.value.code == code
    assert cw.unary_error(cw.ConnectError("already_exists", "x")).status_code == 409
    assert cw.ConnectError("made_up", "x").code == "unknown"
    assert cw.timeout_s("2500", 60, 3600) == 2.5 and cw.timeout_s(None, 60, 3600) == 60
    assert cw.timeout_s("99999999", 60, 3600) == 3600
    with pytest.raises(cw.ConnectError):
        cw.timeout_s("soon", 60, 3600)


def test_an_access_token_opens_one_sandbox_of_one_org():
    s = Sealer(b"k" * 32)
    tok = s.access_token("org-1", "sb-1")
    assert s.token_org(tok, "sb-1") == "org-1"
    assert s.token_org(tok, "sb-2") is None  # another sandbox
    forged = "org-2." + tok.split(".", 1)[1]
    assert s.token_org(forged, "sb-1") is None  # another org, same MAC
    assert Sealer(b"j" * 32).token_org(tok, "sb-1") is None  # another gateway key
    for junk in ("", ".", "org-1.", "x" * 500, tok[:-1]):
        assert s.token_org(junk, "sb-1") is None


def test_paths_entries_templates_and_metadata():
    assert sandbox_path("a/b.txt") == "/root/a/b.txt" and sandbox_path("/tmp/../etc") == "/etc"
    for bad in ("", None, "a\0b", 5):
        with pytest.raises(cw.ConnectError):
            sandbox_path(bad)
    e = HostFileStat(name="l", size=3, is_dir=False, mode=stat.S_IFLNK | 0o777, type="symlink",
                     mtime=0.0, target="/x")
    info = entry_info("/root/l", e)
    assert info["type"] == "FILE_TYPE_SYMLINK" and info["symlinkTarget"] == "/x"
    assert info["permissions"] == "lrwxrwxrwx" and "modifiedTime" not in info
    assert image_of("base") == "default" and image_of("mine") == "mine"
    view = {"id": "s", "image": "default", "created_at": "t0", "started_at": None,
            "expires_at": "t1", "vcpus": 1, "memory_mib": 256, "state": "stopped",
            "metadata": None}
    assert detail(view)["state"] is None and detail(view)["templateID"] == "base"
    assert _metadata_filter("a=1&b=x%20y") == {"a": "1", "b": "x y"}


def test_multipart_uploads_are_parsed_by_filename_or_path():
    boundary = "XyZ"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"/root/a.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            ).encode() + b"\x00\xff\r\nbin" + f"\r\n--{boundary}--\r\n".encode()
    kind = f"multipart/form-data; boundary={boundary}"
    assert _multipart(kind, body, None) == [("/root/a.bin", b"\x00\xff\r\nbin")]
    assert _multipart(kind, body, "/other") == [("/other", b"\x00\xff\r\nbin")]

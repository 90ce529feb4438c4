"""The REST edge against abusive clients (a whole fake-driver stack): slow
headers and stalled bodies are cut at their deadlines, oversized headers get
431, text that UTF-8 cannot carry gets 422, and the upload limit belongs to
the upload route alone."""
from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from .conftest import running_stack
from .stack import Api

pytestmark = pytest.mark.e2e
HEADER_TIMEOUT_S, BODY_IDLE_S = 2.0, 2.0


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    env = {"CORRAL_HTTP_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
           "CORRAL_HTTP_BODY_IDLE_S": str(BODY_IDLE_S)}
    with running_stack(tmp_path_factory.mktemp("edge"), "fake", env) as st:
        yield st


def _open(st, data: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", st.http_port), timeout=10)
    s.sendall(data)
    return s


_received: dict[int, bytes] = {}  # what each socket got so far, across polls


def _closed(s: socket.socket) -> bytes | None:
    """What the server sent before closing; None if it is still open. What
    arrives before the close is kept across calls (a response can come a
    poll earlier than the close)."""
    s.settimeout(0.05)
    key = id(s)
    try:
        while chunk := s.recv(65536):
            _received[key] = _received.get(key, b"") + chunk
    except (TimeoutError, BlockingIOError):
        return None
    except ConnectionResetError:
        pass
    return _received.get(key, b"")


def test_half_open_connections_are_cut_at_their_deadlines(edge):
    key = edge.creds.api_key
    partial_head = [_open(edge, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                    for _ in range(250)]
    partial_body = [_open(edge, (f"POST /v1/sandboxes HTTP/1.1\r\nHost: x\r\n"
                                 f"Authorization: Bearer {key}\r\n"
                                 "Content-Type: application/json\r\n"
                                 "Content-Length: 1000\r\n\r\n{\"name\":").encode())
                    for _ in range(250)]
    # a trickle does not keep a head alive past its deadline
    trickle = _open(edge, b"GET /healthz HTTP/1.1\r\n")
    t0 = time.monotonic()
    while time.monotonic() - t0 < HEADER_TIMEOUT_S + 1:
        try:
            trickle.sendall(b"X-A: b\r\n")
        except OSError:
            break
        time.sleep(0.3)
    deadline = time.monotonic() + HEADER_TIMEOUT_S + BODY_IDLE_S + 10
    while True:
        open_heads = sum(_closed(s) is None for s in partial_head)
        bodies = [_closed(s) for s in partial_body]
        if not open_heads and all(b is not None for b in bodies):
            break
        assert time.monotonic() < deadline, (open_heads, sum(b is None for b in bodies))
        time.sleep(0.2)
    assert _closed(trickle) is not None
    bad = [b[:300] for b in bodies if b is None or not b.startswith(b"HTTP/1.1 408")]
    assert not bad, (len(bad), bad[:2])
    # the edge still serves
    assert httpx.get(edge.api_url + "/healthz").status_code == 200
    for s in partial_head + partial_body + [trickle]:
        s.close()


def test_oversized_headers_get_431(edge):
    key = {"Authorization": f"Bearer {edge.creds.api_key}"}
    big = httpx.get(edge.api_url + "/v1/sandboxes", headers={**key, "X-Big": "a" * 100_000})
    many = httpx.get(edge.api_url + "/v1/sandboxes",
                     headers=[*key.items(), *((f"X-H{i}", "v") for i in range(5000))])
    for r in (big, many):
        assert r.status_code == 431 and r.json()["op_id"] == r.headers["x-op-id"]
    assert httpx.get(edge.api_url + "/v1/sandboxes", headers=key).status_code == 200


def test_text_that_utf8_cannot_carry_gets_422(edge):
    api = Api(edge.api_url, edge.creds.api_key)
    for body in ('{"env": {"K": "\\ud800"}}', '{"metadata": {"k": "\\udfff"}}',
                 '{"env": {"\\ud83d": "v"}}'):
        r = api.post("/v1/sandboxes", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422, (body, r.text)
        assert r.json()["errors"][0]["loc"][0] == "body"
    ok = api.post("/v1/sandboxes", content='{"metadata": {"k": "\\ud83d\\ude00"}}',
                  headers={"content-type": "application/json"})  # a proper pair: 😀
    assert ok.status_code == 202 and ok.json()["metadata"] == {"k": "😀"}
    snap_fork = api.post("/v1/snapshots/nope/fork", content='{"env": {"K": "\\ud800"}}',
                         headers={"content-type": "application/json"})
    assert snap_fork.status_code == 422


def test_the_upload_limit_is_the_upload_routes_alone(edge):
    api = Api(edge.api_url, edge.creds.api_key)
    two_mib = json.dumps({"name": "x" * (2 << 20)})
    for path in ("/v1/snapshots/files/fork", "/v1/sandboxes?path=/files"):
        r = api.post(path, content=two_mib, headers={"content-type": "application/json"})
        assert r.status_code == 413, (path, r.status_code)

"""SDK: config precedence, problem -> exception mapping, SSE parsing, retries,
streaming exec and the sync/async clients, all over httpx.MockTransport."""
import argparse
import asyncio
import json
from datetime import UTC, datetime

import httpx
import pytest

from corral_sdk import (AsyncSandbox, AuthError, ConflictError, CorralConnectionError, CorralError,
                    ExecResult, NotFoundError, RateLimitError, RetryPolicy, Sandbox,
                    SandboxFailedError, SandboxTimeoutError, ServerError, StreamError,
                    ValidationError)
from corral_sdk.cli.events import parse_since, query
from corral_sdk.cli.sandbox import _remote, exec_argv, register
from corral_sdk.config import Config, ConfigError
from corral_sdk.errors import error_from_problem
from corral_sdk.sse import SSEDecoder

pytestmark = pytest.mark.unit
URL, KEY = "http://corral.test", "crl_test"
FAST = RetryPolicy(base=0.0)
INFO = {"id": "sb1", "name": "box", "state": "running", "org_id": "o", "image": "default"}


def problem(status, detail="x", **extra):
    return httpx.Response(status, headers={"content-type": "application/problem+json",
                                           "x-op-id": "op_1"},
                          json={"type": f"https://corral.dev/problems/{extra.pop('code', 'e')}",
                                "title": "T", "status": status, "detail": detail,
                                "op_id": "op_1", **extra})


def client(handler, cls=Sandbox, info=INFO):
    d = cls._driver_cls(Config(URL, KEY), retry=FAST, transport=httpx.MockTransport(handler))
    return cls(d, dict(info))


def opts(handler):
    return dict(api_url=URL, api_key=KEY, retry=FAST, transport=httpx.MockTransport(handler))


# ---- config ----------------------------------------------------------------
def test_config_precedence(tmp_path, monkeypatch):
    (tmp_path / ".corral").mkdir()
    (tmp_path / ".corral" / "dev.env").write_text(
        "# dev\nCORRAL_API_URL=http://file:1/\nexport CORRAL_API_KEY='crl_file'\n\n")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    monkeypatch.delenv("CORRAL_API_URL", raising=False)
    monkeypatch.delenv("CORRAL_API_KEY", raising=False)
    assert Config.resolve() == Config("http://file:1", "crl_file")  # found in a parent
    monkeypatch.setenv("CORRAL_API_KEY", "crl_env")
    assert Config.resolve() == Config("http://file:1", "crl_env")  # env beats the file
    assert Config.resolve(api_url="http://arg", api_key="crl_arg") == Config("http://arg", "crl_arg")


def test_config_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CORRAL_API_URL", raising=False)
    monkeypatch.setenv("CORRAL_API_KEY", "k")
    with pytest.raises(ConfigError, match="CORRAL_API_URL"):
        Config.resolve()


# ---- problem -> exception --------------------------------------------------
@pytest.mark.parametrize("status,cls", [(401, AuthError), (403, AuthError), (404, NotFoundError),
                                        (409, ConflictError), (422, ValidationError),
                                        (429, RateLimitError), (500, ServerError),
                                        (503, ServerError), (418, CorralError)])
def test_status_maps_to_exception(status, cls):
    r = problem(status, "nope")
    e = error_from_problem(status, r.json(), r.headers)
    assert type(e) is cls and e.status == status and e.op_id == "op_1" and e.detail == "nope"


def test_problem_details_carried():
    errs = [{"loc": ["body", "name"], "msg": "bad", "type": "value_error"}]
    e = error_from_problem(422, problem(422, "invalid", errors=errs).json())
    assert e.errors == errs and "body.name: bad" in str(e) and e.title == "T"
    r = problem(429)
    r.headers["retry-after"] = "2.5"
    assert error_from_problem(429, r.json(), r.headers).retry_after == 2.5
    f = error_from_problem(502, problem(502, code="sandbox-failed", sandbox_id="s",
                                        failure={"code": "boot", "message": "m"}).json())
    assert isinstance(f, SandboxFailedError) and f.failure["code"] == "boot" and f.sandbox_id == "s"
    t = error_from_problem(504, problem(504, code="wait-timeout").json())
    assert isinstance(t, SandboxTimeoutError) and isinstance(t, TimeoutError)
    plain = error_from_problem(502, None, {"x-op-id": "op_9"}, "<html>bad gateway</html>")
    assert isinstance(plain, ServerError) and plain.op_id == "op_9" and "bad gateway" in plain.detail


# ---- SSE parser ------------------------------------------------------------
def parse(*chunks: bytes, close=True):
    d = SSEDecoder()
    out = [e for c in chunks for e in d.feed(c)]
    return out + (d.close() if close else [])


def test_sse_basic_comments_and_multiline():
    evs = parse(b": keepalive\n\nevent: stdout\ndata: {\"data\": 1}\n\n"
                b"data: a\ndata:b\ndata:  c\nid: 7\n\n")
    assert [(e.event, e.data, e.id) for e in evs] == [
        ("stdout", '{"data": 1}', None), ("message", "a\nb\n c", "7")]


def test_sse_crlf_cr_and_splits_everywhere():
    raw = "\ufeffevent: exit\r\ndata: {\"exit_code\": 0}\r\n\r\nevent: e2\rdata: é\r\r".encode()
    whole = parse(raw)
    assert [(e.event, e.data) for e in whole] == [("exit", '{"exit_code": 0}'), ("e2", "é")]
    bytewise = parse(*(raw[i:i + 1] for i in range(len(raw))))  # CRLF and UTF-8 split
    assert [(e.event, e.data) for e in bytewise] == [(e.event, e.data) for e in whole]


def test_sse_edge_cases():
    assert parse(b"event: x\n\n") == []  # no data: no event
    assert parse(b"data: partial") == []  # unterminated at EOF: dropped
    assert [e.data for e in parse(b"data\n\n")] == [""]  # field with no colon
    assert [e.event for e in parse(b"event: a\nunknown: z\ndata: 1\n\ndata: 2\n\n")] == ["a", "message"]
    assert [e.data for e in parse(b"data: \xff\n\n")] == ["\ufffd"]  # invalid UTF-8 replaced
    assert [e.data for e in parse(b"data: x\r", b"\n\r\n")] == ["x"]


# ---- retries ---------------------------------------------------------------
def test_get_retries_transient_failures_then_succeeds():
    seen = []

    def handler(req):
        seen.append(req.method)
        if len(seen) == 1:
            raise httpx.ConnectError("refused")
        if len(seen) == 2:
            return problem(503)
        if len(seen) == 3:
            return httpx.Response(429, headers={"retry-after": "0"}, json={"status": 429})
        return httpx.Response(200, json=INFO)
    sb = Sandbox.connect("sb1", **opts(handler))
    assert sb.id == "sb1" and len(seen) == 4


def test_retries_are_bounded_and_wrapped():
    calls = []

    def handler(req):
        calls.append(1)
        raise httpx.ConnectError("refused")
    with pytest.raises(CorralConnectionError):
        Sandbox.connect("sb1", **opts(handler))
    assert len(calls) == FAST.retries + 1


def test_create_retries_with_the_same_idempotency_key_but_exec_never_retries():
    keys = []

    def handler(req):
        if req.url.path.endswith("/exec"):
            keys.append("exec")
            return problem(503)
        keys.append(req.headers.get("idempotency-key"))
        assert req.url.params["wait"] == "true" and req.url.params["timeout_s"] == "30"
        assert json.loads(req.content)["network"] == {"egress": True}
        return problem(502) if len(keys) < 3 else httpx.Response(201, json=INFO)
    sb = Sandbox.create(name="box", egress=True, timeout=30, **opts(handler))
    assert len(keys) == 3 and len(set(keys)) == 1 and keys[0].startswith("sdk-")
    with pytest.raises(ServerError):
        sb.exec(["true"])
    assert keys.count("exec") == 1


def test_failed_create_is_not_retried():
    n = []

    def handler(req):
        n.append(1)
        return problem(502, "did not start", code="sandbox-failed", sandbox_id="s1",
                       failure={"code": "image", "message": "no image"})
    with pytest.raises(SandboxFailedError) as ei:
        Sandbox.create(idempotency_key="k1", **opts(handler))
    assert len(n) == 1 and ei.value.failure["code"] == "image" and ei.value.op_id == "op_1"


def test_policy_delays_are_bounded():
    p = RetryPolicy(base=0.5, cap=2.0)
    assert all(0 <= p.delay(i) <= 2.0 for i in range(10))
    assert not p.should_retry(0, RateLimitError("x", retry_after=60))
    assert not p.should_retry(3, ServerError("x", status=503))
    assert not p.should_retry(0, ValidationError("x", status=422))


# ---- sandbox operations ----------------------------------------------------
def test_list_walks_every_page_and_filters():
    def handler(req):
        assert req.url.params["state"] == "running"
        cur = req.url.params.get("cursor")
        nxt = {None: "c1", "c1": "c2", "c2": None}[cur]
        return httpx.Response(200, json={"items": [{**INFO, "id": f"sb-{cur}"}], "next_cursor": nxt})
    got = Sandbox.list(state="running", **opts(handler))
    assert [s.id for s in got] == ["sb-None", "sb-c1", "sb-c2"]


def test_exec_plain_str_becomes_sh_c():
    def handler(req):
        body = json.loads(req.content)
        assert body == {"cmd": ["sh", "-c", "echo $X"], "env": {"X": "1"}, "timeout_s": 5,
                        "cwd": "/tmp", "stdin": "in"}
        return httpx.Response(200, json={"exit_code": 0, "stdout": "1\n", "stderr": "",
                                         "duration_ms": 3, "timed_out": False, "truncated": False})
    res = client(handler).exec("echo $X", env={"X": "1"}, cwd="/tmp", timeout=5, stdin="in")
    assert res == ExecResult(0, "1\n", "", 3, False, False) and res.ok


def sse(*events):
    return [f"event: {n}\ndata: {json.dumps(d)}\n\n".encode() for n, d in events]


EXIT = ("exit", {"exit_code": 3, "duration_ms": 9, "timed_out": False, "truncated": False})


def test_streaming_exec_calls_back_per_chunk_as_it_arrives():
    log = []

    def body():
        for i, chunk in enumerate(sse(("stdout", {"data": "a"}), ("stderr", {"data": "e"}),
                                      ("stdout", {"data": "b"}), EXIT)):
            log.append(f"sent{i}")
            yield chunk[:5]  # split mid-line
            yield chunk[5:]

    def handler(req):
        assert req.headers["accept"] == "text/event-stream"
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())
    res = client(handler).exec(["x"], on_stdout=lambda t: log.append("out:" + t),
                               on_stderr=lambda t: log.append("err:" + t))
    assert res == ExecResult(3, "ab", "e", 9, False, False)
    assert log[:4] == ["sent0", "out:a", "sent1", "err:e"]  # live, not buffered


def test_streaming_exec_caps_output_and_maps_error_events():
    def handler(req):
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content=b"".join(sse(("stdout", {"data": "x" * 10}),
                                                   ("stdout", {"data": "y" * 10}), EXIT)))
    sb = client(handler)
    sb.output_cap = 15
    res = sb.exec(["x"], on_stdout=lambda t: None)
    assert res.stdout == "x" * 10 + "y" * 5 and res.truncated

    def failing(req):
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content=b"".join(sse(("stdout", {"data": "a"}), (
                                  "error", {"status": 409, "title": "Conflict",
                                            "detail": "sandbox went away", "op_id": "op_2"}))))
    with pytest.raises(ConflictError, match="went away"):
        client(failing).exec(["x"], on_stdout=lambda t: None)

    def cut(req):
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content=b"".join(sse(("stdout", {"data": "a"}))))
    with pytest.raises(StreamError):
        client(cut).exec(["x"], on_stderr=lambda t: None)


def test_streaming_exec_falls_back_to_json_and_errors_before_stream():
    doc = {"exit_code": 0, "stdout": "hi\n", "stderr": "", "duration_ms": 1, "timed_out": False}
    got = []
    res = client(lambda r: httpx.Response(200, json=doc)).exec(["x"], on_stdout=got.append)
    assert res.stdout == "hi\n" and got == ["hi\n"]
    with pytest.raises(ConflictError):
        client(lambda r: problem(409, "not running")).exec(["x"], on_stdout=got.append)


def test_files_and_kill_wait_and_context_manager():
    state = {"deletes": 0, "gets": 0}

    def handler(req):
        p = req.url.path
        if p.endswith("/files") and req.method == "PUT":
            assert req.url.params["path"] == "/r/a.txt" and req.content == b"hi"
            return httpx.Response(204)
        if p.endswith("/files"):
            return httpx.Response(200, content=b"\x00\x01")
        if p.endswith("/files/list"):
            return httpx.Response(200, json={"entries": [
                {"name": "a.txt", "size": 2, "is_dir": False, "mode": 0o644}]})
        if req.method == "DELETE":
            state["deletes"] += 1
            return httpx.Response(202, json={**INFO, "state": "stopping"})
        state["gets"] += 1
        return httpx.Response(200, json={**INFO, "state": "destroyed" if state["gets"] > 1 else "stopping"})
    sb = client(handler)
    assert sb.files.write("/r/a.txt", "hi") is None
    assert sb.files.read("/r/a.txt") == b"\x00\x01"
    [fi] = sb.files.list("/r/")
    assert (fi.path, fi.size, fi.is_dir) == ("/r/a.txt", 2, False)
    assert sb.kill(wait=True).state == "destroyed" and state["gets"] == 2
    with pytest.raises(RuntimeError, match="boom"):
        with client(handler):
            raise RuntimeError("boom")
    assert state["deletes"] == 2


def test_context_manager_does_not_mask_the_body_error():
    with pytest.raises(RuntimeError, match="body"):
        with client(lambda r: problem(503)):
            raise RuntimeError("body")


async def test_async_sandbox_same_operations():
    async def body():
        for c in sse(("stdout", {"data": "a"}), ("stdout", {"data": "b"}), EXIT):
            yield c
    calls = []

    async def handler(req):
        calls.append((req.method, req.url.path))
        if req.url.path == "/v1/sandboxes":
            return httpx.Response(201, json=INFO)
        if req.url.path.endswith("/exec"):
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())
        if req.url.path.endswith("/files"):
            return httpx.Response(200, content=b"data")
        return httpx.Response(202, json={**INFO, "state": "stopping"})
    got = []

    async def on_out(t):
        await asyncio.sleep(0)
        got.append(t)
    async with await AsyncSandbox.create(**opts(handler)) as sb:
        assert isinstance(sb, AsyncSandbox) and sb.state == "running"
        res, data = await asyncio.gather(sb.exec("x", on_stdout=on_out), sb.files.read("/f"))
        assert (res.stdout, res.exit_code, got, data) == ("ab", 3, ["a", "b"], b"data")
    assert calls[-1] == ("DELETE", "/v1/sandboxes/sb1")


# ---- CLI helpers -------------------------------------------------------------
def test_cli_helpers():
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_since("10m", now) == datetime(2024, 5, 1, 11, 50, tzinfo=UTC)
    assert parse_since("2024-05-01T10:00Z") == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert parse_since("2024-05-01T10:00").tzinfo is not None
    a = argparse.Namespace(sandbox="sb1", type=["SandboxStarted", "SandboxFailed"], org=None,
                           since=now, cursor=None)
    assert query(a) == {"sandbox_id": "sb1", "type": ["SandboxStarted", "SandboxFailed"],
                        "since": "2024-05-01T12:00:00+00:00"}
    a.cursor = "42"  # a cursor wins over --since
    assert query(a) == {"sandbox_id": "sb1", "type": ["SandboxStarted", "SandboxFailed"],
                        "cursor": "42"}
    assert _remote("sb1:/root/x") == ("sb1", "/root/x")
    assert _remote("./local:/x") is None and _remote("C:/x") == ("C", "/x") and _remote("file") is None


@pytest.mark.parametrize("argv,want,opts", [
    (["sb", "--", "sh", "-c", "exit 3"], ["sh", "-c", "exit 3"], {}),
    (["sb", "-i", "--env", "A=1", "--timeout", "5", "--", "cat", "-n"], ["cat", "-n"],
     {"stdin": True, "env": ["A=1"], "timeout": 5.0}),
    (["--cwd", "/tmp", "sb", "--", "ls", "--", "x"], ["ls", "--", "x"], {"cwd": "/tmp"}),
    (["sb", "ls", "-l"], ["ls", "-l"], {}),
])
def test_cli_exec_argv(argv, want, opts):
    import argparse
    ap = argparse.ArgumentParser()
    register(ap.add_subparsers(), {})
    a = ap.parse_args(["sandbox", "exec", *argv])
    assert exec_argv(a) == want and a.id == "sb"
    assert all(getattr(a, k) == v for k, v in opts.items())


def test_progress_spins_only_on_a_tty():
    import io
    import time as _t

    from corral_sdk.cli.sandbox import progress

    class Tty(io.StringIO):
        def isatty(self):
            return True
    tty, pipe = Tty(), io.StringIO()
    with progress("creating", tty):
        _t.sleep(0.25)
    with progress("creating", pipe):
        pass
    assert "creating" in tty.getvalue() and tty.getvalue().endswith("\r\033[K")
    assert pipe.getvalue() == ""


def test_lifecycle_actions_update_the_info():
    seen = []

    def handler(req):
        seen.append((req.url.path.rsplit("/", 1)[-1], req.content))
        return httpx.Response(202, json={**INFO, "state": "stopping"})
    sb = client(handler)
    for verb in ("stop", "start", "pause", "resume"):
        assert getattr(sb, verb)() is sb and sb.state == "stopping"
    sb.set_ttl(900)
    assert [v for v, _ in seen] == ["stop", "start", "pause", "resume", "ttl"]
    assert json.loads(seen[-1][1]) == {"ttl_seconds": 900}

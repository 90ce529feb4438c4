"""corral-sdk as its own package: argument errors before any request,
metadata filters, snapshots and forks, the CLI's commands and its server
plugin, and code that Python 3.9 runs (vermin) using only its own imports."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from corral_sdk import (ArgumentError, AsyncSandbox, AsyncSnapshot, NotFoundError, RetryPolicy, Sandbox,
                        SandboxTimeoutError, Snapshot)
from corral_sdk.cli import build_parser

pytestmark = pytest.mark.unit
SDK = Path(__file__).resolve().parents[2] / "sdk" / "python"
URL, KEY = "http://corral.test", "crl_test"
INFO = {"id": "sb1", "name": "box", "state": "running", "metadata": {}}


def opts(handler):
    return dict(api_url=URL, api_key=KEY, retry=RetryPolicy(base=0.0),
                transport=httpx.MockTransport(handler))


def never(req):
    raise AssertionError(f"nothing may be sent: {req.method} {req.url}")


@pytest.mark.parametrize("kwargs,param", [
    ({"vcpus": "2"}, "vcpus"), ({"vcpus": 0}, "vcpus"), ({"vcpus": True}, "vcpus"),
    ({"memory_mib": 1.5}, "memory_mib"), ({"env": {"A": 1}}, "env"), ({"env": ["A=1"]}, "env"),
    ({"metadata": "team=x"}, "metadata"), ({"name": "Bad_Name"}, "name"), ({"image": ""}, "image"),
    ({"ttl_seconds": -5}, "ttl_seconds"), ({"timeout": 0}, "timeout"),
    ({"retry": 3}, "retry"),
])
def test_a_wrong_argument_to_create_is_named_before_anything_is_sent(kwargs, param):
    with pytest.raises(ArgumentError) as ei:
        Sandbox.create(**{**opts(never), **kwargs})
    assert ei.value.param == param and param in str(ei.value)
    assert isinstance(ei.value, TypeError) and isinstance(ei.value, ValueError)


def test_an_unknown_keyword_names_the_method_not_an_internal_class():
    with pytest.raises(TypeError, match=r"create\(\) got an unexpected keyword argument 'template'"):
        Sandbox.create(template="base", **opts(never))
    with pytest.raises(TypeError, match=r"list\(\) got an unexpected keyword argument 'labels'"):
        Sandbox.list(labels={"a": "b"}, **opts(never))


def test_instance_calls_check_their_arguments():
    sb = Sandbox(Sandbox._driver(URL, KEY, None, httpx.MockTransport(never)), dict(INFO))
    for call, param in ((lambda: sb.exec([]), "cmd"), (lambda: sb.exec(["ls", 1]), "cmd"),
                        (lambda: sb.exec("ls", cwd="tmp"), "cwd"),
                        (lambda: sb.exec("ls", stdin=b"x"), "stdin"),
                        (lambda: sb.files.write("rel/path", b""), "path"),
                        (lambda: sb.files.write("/x", 5), "data"),
                        (lambda: sb.files.read(""), "path"), (lambda: sb.set_ttl("60"), "ttl_seconds"),
                        (lambda: sb.snapshot("Not A Name"), "name"),
                        (lambda: sb.snapshot("ok", ttl_seconds=5), "ttl_seconds")):
        with pytest.raises(ArgumentError) as ei:
            call()
        assert ei.value.param == param


def test_list_filters_by_metadata_over_every_page():
    pages = {None: ([{**INFO, "id": "a", "metadata": {"team": "x", "env": "ci"}},
                     {**INFO, "id": "b", "metadata": {"team": "y"}}], "c1"),
             "c1": ([{**INFO, "id": "c", "metadata": {"team": "x"}},
                     {**INFO, "id": "d", "metadata": None}], None)}

    def handler(req):
        items, nxt = pages[req.url.params.get("cursor")]
        return httpx.Response(200, json={"items": items, "next_cursor": nxt})
    assert [s.id for s in Sandbox.list(metadata={"team": "x"}, **opts(handler))] == ["a", "c"]
    assert [s.id for s in Sandbox.list(metadata={"team": "x", "env": "ci"}, **opts(handler))] == ["a"]
    assert len(Sandbox.list(**opts(handler))) == 4


def snapshot_server(seen):
    snap = {"id": "sn1", "name": "base", "state": "ready", "sandbox_id": "sb1"}

    def handler(req):
        seen.append((req.method, req.url.path, dict(req.url.params),
                     json.loads(req.content) if req.content else None))
        if req.url.path == "/v1/sandboxes/sb1/snapshots":
            return httpx.Response(201, json=snap)
        if req.url.path == "/v1/sandboxes/sb2/snapshots":  # the wait ended first
            return httpx.Response(202, json={**snap, "state": "pending"})
        if req.url.path == "/v1/snapshots/sn1/fork":
            n = json.loads(req.content)["count"]
            return httpx.Response(207, json={"items": [
                {**INFO, "id": f"f{i}", "state": "running" if i else "failed"} for i in range(n)]})
        if req.method == "DELETE":
            return httpx.Response(202, json={**snap, "state": "deleting"})
        return httpx.Response(200, json=snap)
    return handler


def test_snapshot_fork_delete():
    seen = []
    sb = Sandbox(Sandbox._driver(URL, KEY, None, httpx.MockTransport(snapshot_server(seen))),
                 dict(INFO))
    snap = sb.snapshot("base", ttl_seconds=3600, timeout=30)
    assert isinstance(snap, Snapshot) and snap.state == "ready" and snap.sandbox_id == "sb1"
    assert seen[-1][2] == {"wait": "true", "timeout_s": "30"}
    assert seen[-1][3] == {"name": "base", "ttl_seconds": 3600}
    forks = snap.fork(3, ttl_seconds=600, env={"A": "1"}, metadata={"k": "v"})
    assert [type(f) for f in forks] == [Sandbox] * 3
    assert [f.state for f in forks] == ["failed", "running", "running"]  # every one returned
    assert seen[-1][3] == {"count": 3, "ttl_seconds": 600, "env": {"A": "1"},
                           "metadata": {"k": "v"}, "network": {"egress": False}}
    assert snap.delete().state == "deleting" and seen[-1][0] == "DELETE"
    with pytest.raises(ArgumentError):
        snap.fork(21)
    pending = Sandbox(sb._http, {**INFO, "id": "sb2"})
    with pytest.raises(SandboxTimeoutError, match="still pending"):
        pending.snapshot("base")


def test_async_snapshot_forks_async_sandboxes():
    import asyncio
    seen = []

    async def go():
        d = AsyncSandbox._driver(URL, KEY, None, httpx.MockTransport(snapshot_server(seen)))
        snap = await AsyncSandbox(d, dict(INFO)).snapshot("base")
        forks = await snap.fork(2)
        await d.close()
        return snap, forks
    snap, forks = asyncio.run(go())
    assert isinstance(snap, AsyncSnapshot) and [type(f) for f in forks] == [AsyncSandbox] * 2


def _commands(ap):
    sub = next(a for a in ap._actions if a.dest == "cmd")
    return sub.choices


def test_the_cli_alone_has_the_client_commands_and_a_server_adds_its_own():
    alone = _commands(build_parser(plugins=[]))
    assert {"sandbox", "snapshot", "image", "events"} <= set(alone)
    assert not {"up", "doctor", "secrets"} & set(alone)
    verbs = next(a for a in alone["sandbox"]._actions if a.dest == "sandbox_cmd").choices
    assert {"create", "list", "show", "exec", "cp", "stop", "start", "pause", "resume", "ttl",
            "rm"} <= set(verbs)
    snap = next(a for a in alone["snapshot"]._actions if a.dest == "snapshot_cmd").choices
    assert {"take", "list", "show", "fork", "rm"} <= set(snap)
    with_server = _commands(build_parser())  # the `corral.cli` entry point of this install
    assert {"up", "doctor", "secrets"} <= set(with_server)
    a = build_parser().parse_args(["image", "build"])
    assert a.tag is None and a.builtin.__module__ == "corral.cli"
    a = build_parser(plugins=[]).parse_args(["image", "build"])
    with pytest.raises(SystemExit, match="-t NAME"):
        a.fn(a)


def test_every_help_text_renders():
    ap = build_parser()
    out = subprocess.run([sys.executable, "-m", "corral", "sandbox", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "pause" in out.stdout and "ttl" in out.stdout
    assert "snapshot" in ap.format_help() and "up" in ap.format_help()


def test_sdk_code_runs_on_python_3_9_and_imports_nothing_of_the_server():
    files = sorted((SDK / "corral_sdk").rglob("*.py"))
    assert len(files) > 10
    r = subprocess.run([str(Path(sys.executable).parent / "vermin"), "--no-tips", "--eval-annotations",
                        "-t=3.9-", "--violations", str(SDK / "corral_sdk")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    stdlib = set(sys.stdlib_module_names)
    for f in files:
        tree = ast.parse(f.read_text())
        if f.name != "__init__.py":  # `X | None` annotations need it on 3.9
            assert "from __future__ import annotations" in f.read_text(), f
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert roots <= stdlib | {"httpx", "__future__"}, (f, roots)


def test_the_package_declares_only_httpx_and_python_3_9():
    import tomllib
    doc = tomllib.loads((SDK / "pyproject.toml").read_text())["project"]
    assert doc["name"] == "corral-sdk" and doc["requires-python"] == ">=3.9"
    assert [d.split(">")[0].split("=")[0] for d in doc["dependencies"]] == ["httpx"]
    server = tomllib.loads((SDK.parents[1] / "pyproject.toml").read_text())["project"]
    assert f"corral-sdk=={doc['version']}" in server["dependencies"]
    assert "scripts" not in server  # one `corral` command: corral-sdk's


def test_files_stat_exists_mkdir_remove_rename_requests():
    seen = []
    entry = {"name": "d", "size": 4096, "is_dir": True, "mode": 0o40755, "type": "dir",
             "mtime": 1.5}

    def handler(req):
        seen.append((req.method, req.url.path.removeprefix("/v1/sandboxes/sb1/files"),
                     dict(req.url.params)))
        if req.url.path == "/v1/sandboxes/gone":
            return httpx.Response(404, json={"title": "Not Found", "status": 404, "detail": "x"})
        if req.url.params.get("path") == "/missing":
            return httpx.Response(404, json={"title": "Not Found", "status": 404, "detail": "y"})
        if req.url.path.startswith("/v1/sandboxes/gone/"):
            return httpx.Response(404, json={"title": "Not Found", "status": 404, "detail": "z"})
        if req.method == "DELETE":
            return httpx.Response(204)
        if req.url.path.endswith("/v1/sandboxes/sb1"):
            return httpx.Response(200, json=INFO)
        return httpx.Response(200, json=entry)
    d = Sandbox._driver(URL, KEY, None, httpx.MockTransport(handler))
    sb = Sandbox(d, dict(INFO))
    st = sb.files.stat("/d")
    assert (st.path, st.type, st.is_dir, st.mtime) == ("/d", "dir", True, 1.5)
    assert sb.files.exists("/d") is True
    assert sb.files.exists("/missing") is False  # the path is missing, the sandbox is not
    assert seen[-1] == ("GET", "/v1/sandboxes/sb1", {})
    with pytest.raises(NotFoundError):  # a sandbox that is gone is not "no such file"
        Sandbox(d, {**INFO, "id": "gone"}).files.exists("/d")
    assert sb.files.make_dir("/d").path == "/d"
    assert seen[-1] == ("POST", "/mkdir", {"path": "/d", "parents": "true"})
    assert sb.files.remove("/d", recursive=True) is None
    assert seen[-1] == ("DELETE", "", {"path": "/d", "recursive": "true"})
    assert sb.files.rename("/d", "/e").path == "/e"
    assert seen[-1] == ("POST", "/rename", {"path": "/d", "to": "/e"})
    with pytest.raises(ArgumentError):
        sb.files.rename("/d", "e")

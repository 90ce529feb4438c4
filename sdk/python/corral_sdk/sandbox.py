"""Sandbox: the synchronous client, and the base both clients share.

Each public method returns `self._run(<operation generator>)`: the sync driver
runs it to a value, the async driver returns a coroutine to await.
"""
from __future__ import annotations

import builtins
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import _args as chk
from . import _http as h
from .config import Config
from .errors import (ArgumentError, CorralError, NotFoundError, SandboxTimeoutError, StreamError)
from .processes import Processes
from .sse import SSEDecoder

OutputCallback = Callable[[str], Any]


@dataclass
class FileInfo:
    name: str
    path: str
    size: int
    is_dir: bool
    mode: int
    type: str | None = None  # file, dir, symlink, other (from stat, mkdir, rename)
    mtime: float | None = None  # seconds since the epoch
    target: str | None = None  # a symlink's target

    @classmethod
    def from_json(cls, path: str, e: dict) -> FileInfo:
        return cls(e["name"], path, e["size"], e["is_dir"], e["mode"], e.get("type"),
                   e.get("mtime"), e.get("target"))


def _create_body(image, name, vcpus, memory_mib, ttl_seconds, env, metadata, egress) -> dict:
    chk.check_str("image", image)
    chk.check_name("name", name, optional=True)
    chk.check_int("vcpus", vcpus, 1, 64)
    chk.check_int("memory_mib", memory_mib, 64)
    chk.check_int("ttl_seconds", ttl_seconds, 1, optional=True)
    chk.check_map("env", env)
    chk.check_map("metadata", metadata)
    body: dict[str, Any] = {"image": image, "vcpus": vcpus, "memory_mib": memory_mib,
                            "network": {"egress": bool(egress)}}
    for k, v in (("name", name), ("ttl_seconds", ttl_seconds), ("env", env),
                 ("metadata", metadata)):
        if v is not None:
            body[k] = v
    return body


def _pages(call: h.Call, retry: h.RetryPolicy) -> h.Op:
    """Every item of a cursor-paginated list."""
    items, params = [], dict(call.params or {})
    while True:
        resp = yield from h.request(h.Call("GET", call.path, params=params), retry)
        doc = h.parse_json(resp)
        items.extend(doc.get("items", []))
        if not doc.get("next_cursor"):
            return items
        params["cursor"] = doc["next_cursor"]


class Files:
    """`sb.files`: read, write, list, stat, make, remove and rename files
    inside the sandbox (paths are absolute)."""

    def __init__(self, sandbox: _SandboxBase):
        self._sb = sandbox

    def _path(self) -> str:
        return f"/v1/sandboxes/{self._sb.id}/files"

    def write(self, path: str, data: bytes | str):
        chk.check_path("path", path)
        if not isinstance(data, (str, bytes, bytearray, memoryview)):
            raise ArgumentError(f"data must be str or bytes, got {type(data).__name__}",
                                param="data")
        data = data.encode() if isinstance(data, str) else bytes(data)
        call = h.Call("PUT", self._path(), params={"path": path}, content=data,
                      headers={"Content-Type": "application/octet-stream"}, timeout=120)
        return self._sb._run(self._sb._then(h.request(call, self._sb._retry), lambda _: None))

    def write_many(self, files):
        """Several files in one request: a mapping (or pairs) of absolute path
        to bytes or str. Each is written atomically, in order."""
        pairs = list(files.items()) if isinstance(files, dict) else list(files)
        if not pairs:
            raise ArgumentError("files must name at least one file", param="files")
        boundary = uuid.uuid4().hex
        body = bytearray()
        for path, data in pairs:
            chk.check_path("files", path)
            if not isinstance(data, (str, bytes, bytearray)):
                raise ArgumentError(f"{path}: data must be str or bytes", param="files")
            quoted = path.replace("\\", "\\\\").replace('"', '\\"')
            body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                     f"filename=\"{quoted}\"\r\nContent-Type: application/octet-stream"
                     "\r\n\r\n").encode()
            body += data.encode() if isinstance(data, str) else bytes(data)
            body += b"\r\n"
        body += f"--{boundary}--\r\n".encode()
        call = h.Call("POST", self._path(), content=bytes(body), timeout=300, headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}"})
        return self._sb._run(self._sb._then(h.request(call), h.parse_json))

    def read(self, path: str):
        chk.check_path("path", path)
        call = h.Call("GET", self._path(), params={"path": path}, timeout=120)
        return self._sb._run(self._sb._then(h.request(call, self._sb._retry), lambda r: r.content))

    def list(self, path: str = "/", depth: int = 1):
        """Entries of a directory; with `depth` > 1 also those below it (their
        `name` a path relative to `path`; symlinks not followed)."""
        chk.check_path("path", path)
        chk.check_int("depth", depth, 1, 8)
        call = h.Call("GET", self._path() + "/list", params={"path": path, "depth": depth})

        def parse(resp):
            base = path.rstrip("/")
            return [FileInfo.from_json(f"{base}/{e['name']}", e)
                    for e in h.parse_json(resp).get("entries", [])]
        return self._sb._run(self._sb._then(h.request(call, self._sb._retry), parse))

    def _op(self, method: str, verb: str, params: dict, at: str, retry: bool = True):
        call = h.Call(method, self._path() + verb, params=params, timeout=180)
        op = h.request(call, self._sb._retry if retry else None)
        return self._sb._run(self._sb._then(
            op, lambda r: FileInfo.from_json(at, h.parse_json(r)) if r.content else None))

    def stat(self, path: str):
        """The entry at `path` (a final symlink not followed); NotFoundError if absent."""
        chk.check_path("path", path)
        return self._op("GET", "/stat", {"path": path}, path)

    def exists(self, path: str):
        """True if anything (even a dangling symlink) is at `path`."""
        chk.check_path("path", path)
        call = h.Call("GET", self._path() + "/stat", params={"path": path})
        return self._sb._run(_exists(call, f"/v1/sandboxes/{self._sb.id}", self._sb._retry))

    def watch(self, path: str, on_event: Callable[[dict], Any] | None = None,
              recursive: bool = False, timeout: float = 60):
        """Follow changes under a directory for `timeout` seconds (or until it
        is removed, or `on_event` returns False): each event `{"name" (relative
        to `path`), "op" (create, write, remove, rename, chmod)}` goes to
        `on_event` as it happens; answers the list of them."""
        chk.check_path("path", path)
        chk.check_seconds("timeout", timeout)
        call = h.Call("GET", self._path() + "/watch", stream=True, timeout=60,
                      params={"path": path, "recursive": _flag(recursive), "timeout_s": timeout},
                      headers={"Accept": "text/event-stream"})
        return self._sb._run(_watch(call, on_event))

    def make_dir(self, path: str, parents: bool = True):
        """Create a directory (with `parents`: its missing parents too, and an
        existing directory is fine; without: ConflictError if it exists)."""
        chk.check_path("path", path)
        return self._op("POST", "/mkdir", {"path": path, "parents": _flag(parents)}, path,
                        retry=parents)

    def remove(self, path: str, recursive: bool = False):
        """Remove a file, symlink or empty directory; a directory with what it
        holds only with `recursive`. NotFoundError if absent."""
        chk.check_path("path", path)
        return self._op("DELETE", "", {"path": path, "recursive": _flag(recursive)}, path,
                        retry=False)

    def rename(self, path: str, to: str):
        """Move `path` to `to` (replacing a file there); returns the new entry."""
        chk.check_path("path", path)
        chk.check_path("to", to)
        return self._op("POST", "/rename", {"path": path, "to": to}, to, retry=False)


def _watch(call: h.Call, on_event: Callable[[dict], Any] | None) -> h.Op:
    resp = yield from h.request(call)
    dec = SSEDecoder()
    seen: list[dict] = []
    while True:
        chunk = yield h.Read(resp)
        for ev in (dec.feed(chunk) if chunk else dec.close()):
            if ev.event in ("end", "error"):
                h.event_doc(ev)  # an error raises
                return seen
            if ev.event == "fs":
                e = h.event_doc(ev)
                seen.append(e)
                if on_event is not None and (yield h.Emit(on_event, e)) is False:
                    return seen
        if not chunk:
            raise StreamError("watch stream ended without an end event",
                              op_id=resp.headers.get("x-op-id"))


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _exists(stat: h.Call, sandbox: str, retry: h.RetryPolicy) -> h.Op:
    try:
        yield from h.request(stat, retry)
    except NotFoundError:
        # the path, or the sandbox itself? A sandbox that is gone raises here
        yield from h.request(h.Call("GET", sandbox), retry)
        return False
    return True


class _SandboxBase:
    _driver_cls: type[h.SyncDriver] | type[h.AsyncDriver]
    output_cap = 1 << 20  # characters kept per stream by streaming exec

    def __init__(self, driver: Any, info: dict):
        self._http, self.info = driver, info
        self.files = Files(self)
        self.processes = Processes(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, name={self.name!r}, state={self.state!r})"

    id = property(lambda self: self.info["id"])
    name = property(lambda self: self.info.get("name"))
    state = property(lambda self: self.info.get("state"))

    @property
    def _retry(self) -> h.RetryPolicy:
        return self._http.retry

    def _run(self, op: h.Op):
        return self._http.run(op)

    @staticmethod
    def _then(op: h.Op, fn: Callable[[Any], Any]) -> h.Op:
        return fn((yield from op))

    def _adopt(self, resp: Any) -> _SandboxBase:
        self.info = h.parse_json(resp)
        return self

    @classmethod
    def _driver(cls, api_url: str | None, api_key: str | None, retry: h.RetryPolicy | None,
                transport: Any) -> Any:
        if retry is not None and not isinstance(retry, h.RetryPolicy):
            raise ArgumentError(f"retry must be a RetryPolicy, got {type(retry).__name__}",
                                param="retry")
        return cls._driver_cls(Config.resolve(api_url, api_key), retry=retry,
                               transport=transport)

    # -- class-level operations ------------------------------------------
    @classmethod
    def create(cls, image: str = "default", name: str | None = None, vcpus: int = 1,
               memory_mib: int = 256, ttl_seconds: int | None = None,
               env: dict[str, str] | None = None, metadata: dict[str, str] | None = None,
               egress: bool = False, timeout: float = 120, idempotency_key: str | None = None,
               *, api_url: str | None = None, api_key: str | None = None,
               retry: h.RetryPolicy | None = None, transport: Any = None):
        """Create a sandbox and wait until it is running (raises SandboxFailedError
        or SandboxTimeoutError otherwise). A random Idempotency-Key is used when
        none is given, so transient failures are retried without duplicates.
        `image` is an image name (yours or `default`); a wrong argument raises
        ArgumentError before anything is sent."""
        body = _create_body(image, name, vcpus, memory_mib, ttl_seconds, env, metadata, egress)
        chk.check_seconds("timeout", timeout)
        chk.check_str("idempotency_key", idempotency_key, optional=True)
        d = cls._driver(api_url, api_key, retry, transport)
        call = h.Call("POST", "/v1/sandboxes", params={"wait": "true", "timeout_s": timeout},
                      json=body,
                      headers={"Idempotency-Key": idempotency_key or f"sdk-{uuid.uuid4()}"},
                      timeout=timeout + 30)
        return d.run(cls._then(h.request(call, d.retry),
                               lambda r: cls._running(d, r, timeout)))

    @classmethod
    def _running(cls, d, resp, timeout: float):
        """201: running. 202 after a wait means it is still starting: a timeout."""
        info = h.parse_json(resp)
        if resp.status_code == 202 and info.get("state") != "running":
            raise SandboxTimeoutError(
                f"sandbox {info.get('id')} still {info.get('state')} after {timeout:g}s",
                status=202, op_id=resp.headers.get("x-op-id"),
                body={"sandbox_id": info.get("id"), **info})
        return cls(d, info)

    @classmethod
    def connect(cls, sandbox_id: str, *, api_url: str | None = None,
                api_key: str | None = None, retry: h.RetryPolicy | None = None,
                transport: Any = None):
        chk.check_str("sandbox_id", sandbox_id)
        d = cls._driver(api_url, api_key, retry, transport)
        call = h.Call("GET", f"/v1/sandboxes/{sandbox_id}")
        return d.run(cls._then(h.request(call, d.retry), lambda r: cls(d, h.parse_json(r))))

    @classmethod
    def list(cls, state: str | None = None, name: str | None = None,
             metadata: dict[str, str] | None = None, *, api_url: str | None = None,
             api_key: str | None = None, retry: h.RetryPolicy | None = None,
             transport: Any = None):
        """Every sandbox of the caller's org (all pages), newest-first as served;
        `metadata` keeps those whose metadata has every given key and value."""
        chk.check_str("state", state, optional=True)
        chk.check_str("name", name, optional=True)
        chk.check_map("metadata", metadata)
        want = (metadata or {}).items()
        d = cls._driver(api_url, api_key, retry, transport)
        params = {k: v for k, v in (("state", state), ("name", name), ("limit", 500)) if v}
        op = _pages(h.Call("GET", "/v1/sandboxes", params=params), d.retry)
        return d.run(cls._then(op, lambda items: [
            cls(d, i) for i in items if want <= (i.get("metadata") or {}).items()]))

    # -- instance operations ---------------------------------------------
    def refresh(self):
        call = h.Call("GET", f"/v1/sandboxes/{self.id}")
        return self._run(self._then(h.request(call, self._retry), self._adopt))

    def _action(self, verb: str, body: dict | None = None):
        call = h.Call("POST", f"/v1/sandboxes/{self.id}/{verb}", json=body)
        return self._run(self._then(h.request(call), self._adopt))

    def stop(self):
        return self._action("stop")

    def start(self):
        return self._action("start")

    def pause(self):
        return self._action("pause")

    def resume(self):
        return self._action("resume")

    def set_ttl(self, ttl_seconds: int):
        """Extend the lease: the sandbox now expires `ttl_seconds` from now."""
        chk.check_int("ttl_seconds", ttl_seconds, 1)
        return self._action("ttl", {"ttl_seconds": ttl_seconds})

    def kill(self, wait: bool = False, timeout: float = 60):
        """DELETE the sandbox; with wait=True, until its state is `destroyed`."""
        chk.check_seconds("timeout", timeout)
        return self._run(self._kill(wait, timeout))

    def _kill(self, wait: bool, timeout: float) -> h.Op:
        call = h.Call("DELETE", f"/v1/sandboxes/{self.id}")
        self._adopt((yield from h.request(call, self._retry)))
        deadline = time.monotonic() + timeout
        while wait and self.state != "destroyed":
            if time.monotonic() > deadline:
                raise SandboxTimeoutError(f"sandbox {self.id} still {self.state} after "
                                          f"{timeout:g}s", body={"sandbox_id": self.id})
            yield h.Sleep(0.2)
            try:
                self._adopt((yield from h.request(h.Call("GET", f"/v1/sandboxes/{self.id}"),
                                                  self._retry)))
            except NotFoundError:
                self.info = {**self.info, "state": "destroyed"}
        return self

    def snapshot(self, name: str, ttl_seconds: int | None = None, timeout: float = 120):
        """Snapshot the running sandbox (memory and disk) and wait until it is
        ready; returns a Snapshot (AsyncSnapshot) to fork sandboxes from."""
        from .snapshot import snapshot_op
        return self._run(snapshot_op(self, name, ttl_seconds, timeout))

    def port_url(self, port: int):
        """A URL that reaches `port` served inside the sandbox (HTTP and
        WebSocket) while it runs; whoever holds it gets that port only."""
        chk.check_int("port", port, 1, 65535)
        call = h.Call("GET", f"/v1/sandboxes/{self.id}/ports/{port}/url")
        return self._run(self._then(h.request(call, self._retry),
                                    lambda r: str(h.parse_json(r)["url"])))

    def events(self):
        """The sandbox's own event history, oldest first (all pages)."""
        return self._run(_pages(h.Call("GET", f"/v1/sandboxes/{self.id}/events",
                                       params={"limit": 500}), self._retry))

    def exec(self, cmd: builtins.list[str] | str, env: dict[str, str] | None = None,
             cwd: str | None = None, timeout: float = 60, stdin: str | None = None,
             on_stdout: OutputCallback | None = None, on_stderr: OutputCallback | None = None,
             user: str | None = None):
        """Run a command; a str runs via `sh -c`. With callbacks, output is
        streamed (SSE) and each chunk passed to them as it arrives. `user`:
        one of the image's users (`user` in the default image; default root)."""
        chk.check_argv("cmd", cmd)
        chk.check_map("env", env)
        chk.check_path("cwd", cwd, optional=True)
        chk.check_seconds("timeout", timeout)
        if stdin is not None and not isinstance(stdin, str):
            raise ArgumentError(f"stdin must be str, got {type(stdin).__name__}", param="stdin")
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        body: dict[str, Any] = {"cmd": argv, "env": env or {}, "timeout_s": timeout}
        if cwd is not None:
            body["cwd"] = cwd
        if stdin is not None:
            body["stdin"] = stdin
        if user is not None:
            chk.check_str("user", user)
            body["user"] = user
        path = f"/v1/sandboxes/{self.id}/exec"
        if on_stdout or on_stderr:
            call = h.Call("POST", path, json=body, timeout=timeout + 30, stream=True,
                          headers={"Accept": "text/event-stream"})
            return self._run(h.exec_stream(call, {"stdout": on_stdout, "stderr": on_stderr},
                                           self.output_cap))
        call = h.Call("POST", path, json=body, timeout=timeout + 30)
        return self._run(self._then(h.request(call),
                                    lambda r: h.ExecResult.from_json(h.parse_json(r))))


class Sandbox(_SandboxBase):
    """A sandbox, driven synchronously. `with Sandbox.create() as sb:` kills it
    on exit, even when the body raised."""
    _driver_cls = h.SyncDriver

    def close(self) -> None:
        """Close the HTTP connection pool (shared by sandboxes from one list())."""
        self._http.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.kill()
        except CorralError:
            if exc is None:
                raise  # never mask the body's own exception
        finally:
            self.close()

"""Snapshots of running sandboxes, and forks from them: `Snapshot` (sync) and
`AsyncSnapshot`, built on the same operation generators as the sandboxes."""
from __future__ import annotations

import builtins
from typing import Any

from . import _args as chk
from . import _http as h
from .async_sandbox import AsyncSandbox
from .errors import SandboxTimeoutError
from .sandbox import Sandbox, _pages, _SandboxBase


def _pending(resp: Any, what: str, timeout: float) -> SandboxTimeoutError:
    info = h.parse_json(resp)
    return SandboxTimeoutError(f"{what} still {info.get('state')} after {timeout:g}s",
                               status=202, op_id=resp.headers.get("x-op-id"), body=info)


def snapshot_op(sb: _SandboxBase, name: str, ttl_seconds: int | None, timeout: float) -> h.Op:
    chk.check_name("name", name)
    chk.check_int("ttl_seconds", ttl_seconds, 60, optional=True)
    chk.check_seconds("timeout", timeout)
    body: dict[str, Any] = {"name": name}
    if ttl_seconds is not None:
        body["ttl_seconds"] = ttl_seconds
    call = h.Call("POST", f"/v1/sandboxes/{sb.id}/snapshots", json=body,
                  params={"wait": "true", "timeout_s": timeout}, timeout=timeout + 30)
    resp = yield from h.request(call)
    if resp.status_code == 202:
        raise _pending(resp, f"snapshot {name} of {sb.id}", timeout)
    cls = AsyncSnapshot if isinstance(sb, AsyncSandbox) else Snapshot
    return cls(sb._http, h.parse_json(resp))


class _SnapshotBase:
    _sandbox_cls: Any

    def __init__(self, driver: Any, info: dict) -> None:
        self._http, self.info = driver, info

    id = property(lambda self: self.info["id"])
    name = property(lambda self: self.info.get("name"))
    state = property(lambda self: self.info.get("state"))
    sandbox_id = property(lambda self: self.info.get("sandbox_id"))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, name={self.name!r}, state={self.state!r})"

    @classmethod
    def get(cls, snapshot_id: str, *, api_url: str | None = None, api_key: str | None = None,
            retry: h.RetryPolicy | None = None, transport: Any = None):
        chk.check_str("snapshot_id", snapshot_id)
        d = cls._sandbox_cls._driver(api_url, api_key, retry, transport)
        op = h.request(h.Call("GET", f"/v1/snapshots/{snapshot_id}"), d.retry)
        return d.run(_SandboxBase._then(op, lambda r: cls(d, h.parse_json(r))))

    @classmethod
    def list(cls, *, api_url: str | None = None, api_key: str | None = None,
             retry: h.RetryPolicy | None = None, transport: Any = None):
        """Every snapshot of the caller's org (all pages)."""
        d = cls._sandbox_cls._driver(api_url, api_key, retry, transport)
        op = _pages(h.Call("GET", "/v1/snapshots", params={"limit": 500}), d.retry)
        return d.run(_SandboxBase._then(op, lambda items: [cls(d, i) for i in items]))

    def _adopt(self, resp: Any) -> _SnapshotBase:
        self.info = h.parse_json(resp)
        return self

    def refresh(self):
        op = h.request(h.Call("GET", f"/v1/snapshots/{self.id}"), self._http.retry)
        return self._http.run(_SandboxBase._then(op, self._adopt))

    def delete(self):
        op = h.request(h.Call("DELETE", f"/v1/snapshots/{self.id}"), self._http.retry)
        return self._http.run(_SandboxBase._then(op, self._adopt))

    def fork(self, count: int = 1, ttl_seconds: int = 900, env: dict[str, str] | None = None,
             metadata: dict[str, str] | None = None, egress: bool = False,
             timeout: float = 120):
        """`count` new sandboxes from this snapshot, each with its own identity,
        once started. All are returned: one that failed to start has state
        `failed` (kill it, or read `info["failure"]`)."""
        chk.check_int("count", count, 1, 20)
        chk.check_int("ttl_seconds", ttl_seconds, 10)
        chk.check_map("env", env)
        chk.check_map("metadata", metadata)
        chk.check_seconds("timeout", timeout)
        body = {"count": count, "ttl_seconds": ttl_seconds, "env": env or {},
                "metadata": metadata or {}, "network": {"egress": bool(egress)}}
        call = h.Call("POST", f"/v1/snapshots/{self.id}/fork", json=body,
                      params={"wait": "true", "timeout_s": timeout}, timeout=timeout + 30)
        return self._http.run(_SandboxBase._then(h.request(call), self._forked))

    def _forked(self, resp: Any) -> builtins.list[Any]:
        return [self._sandbox_cls(self._http, i) for i in h.parse_json(resp).get("items", [])]


class Snapshot(_SnapshotBase):
    """A snapshot, driven synchronously."""
    _sandbox_cls = Sandbox


class AsyncSnapshot(_SnapshotBase):
    """A snapshot whose methods return coroutines; forks are AsyncSandbox."""
    _sandbox_cls = AsyncSandbox

"""Background process calls on the guest agent channel (a mixin of AgentClient).

What the guest answers is checked like everything else it sends: a stream
that names no pid, output on an unknown stream, a listing that is not a list
of processes are protocol errors. Output is not capped here (a background
process may run for days); the channel's backlog budget bounds what waits."""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from guest import protocol as P
from services.host_agent.application.ports import (ExecResult, ProcAnswer, ProcCall, ProcEvent,
                                                   ProcInfo, ProcSink)

from .errors import AgentUnavailable, GuestError

STREAM_BACKLOG = 8 << 20  # output bytes waiting for the consumer before overflow
OUT_STREAMS = ("stdout", "stderr", "pty", "events")
WATCH_OPS = frozenset({"create", "write", "remove", "rename", "chmod"})


def _spawn(call: ProcCall) -> dict[str, Any]:
    if not call.cmd:
        raise GuestError("EINVAL", "empty command")
    if call.cwd is not None:
        P.check_path(call.cwd)
    h: dict[str, Any] = {"op": "spawn", "argv": list(call.cmd), "env": dict(call.env),
                         "cwd": call.cwd, "stdin": call.stdin, "attach": call.attach}
    for k in ("user", "tag", "timeout_s"):
        if getattr(call, k) is not None:
            h[k] = getattr(call, k)
    if call.pty is not None:
        h["pty"] = {"cols": call.pty[0], "rows": call.pty[1]}
    return h


def _watch(call: ProcCall) -> dict[str, Any]:
    P.check_path(call.path)
    return {"op": "watch", "path": call.path, "recursive": call.recursive,
            "attach": call.attach, **({"timeout_s": call.timeout_s} if call.timeout_s else {})}


def _connect(call: ProcCall) -> dict[str, Any]:
    if call.port is None or not 1 <= call.port <= 65535:
        raise GuestError("EINVAL", "port must be 1..65535")
    return {"op": "connect", "port": call.port,
            **({"timeout_s": call.timeout_s} if call.timeout_s else {})}


def _on_pid(call: ProcCall) -> dict[str, Any]:
    if call.pid is None:
        raise GuestError("EINVAL", f"{call.action} needs a pid")
    table: dict[str, dict[str, Any]] = {
        "input": {"eof": call.eof}, "signal": {"signal": call.signal},
        "resize": {"pty": {"cols": call.pty[0], "rows": call.pty[1]}} if call.pty else {},
    }
    extra = table.get(call.action, {})
    return {"op": call.action, "pid": call.pid, **extra}


HEADERS = {"spawn": _spawn, "watch": _watch, "connect": _connect, "ps": lambda c: {"op": "ps"},
           **{a: _on_pid for a in ("attach", "input", "signal", "resize", "poll", "close")}}


def _header(call: ProcCall) -> dict[str, Any]:
    make = HEADERS.get(call.action)
    if make is None:
        raise GuestError("EINVAL", f"unknown action {call.action!r}")
    return make(call)


def _info(p: Any) -> ProcInfo:
    if not isinstance(p, dict):
        raise TypeError("not an object")
    cmd, env = p.get("argv"), p.get("env") or {}
    if not isinstance(cmd, list) or not isinstance(env, dict):
        raise TypeError("argv or env")
    tag = p.get("tag")
    return ProcInfo(pid=int(p["pid"]), cmd=[str(a)[:65536] for a in cmd[:256]],
                    cwd=str(p.get("cwd") or "")[:P.MAX_PATH],
                    tag=str(tag)[:256] if tag is not None else None,
                    env={str(k)[:256]: str(v)[:65536] for k, v in list(env.items())[:128]},
                    pty=bool(p.get("pty")), stdin=bool(p.get("stdin")))


def watch_events(raw: Any) -> list[dict[str, str]]:
    """A guest's events, checked: a list of {name, op}; anything else refused."""
    if not isinstance(raw, list):
        raise TypeError("events")
    out = []
    for e in raw[:10000]:
        if not (isinstance(e, dict) and isinstance(e.get("name"), str)
                and e.get("op") in WATCH_OPS):
            raise TypeError("an event")
        out.append({"name": e["name"][:P.MAX_PATH], "op": e["op"]})
    return out


class ProcCalls:
    # AgentClient's, which comes first in its MRO
    async def request(self, header: dict, payload: bytes = b"", timeout: float = 30.0,
                      budget: int = 0) -> tuple[dict, bytes]:
        raise NotImplementedError

    async def _send(self, header: dict, payload: bytes = b"", budget: int = 0,
                    deadline: float | None = None) -> tuple[int, Any]:
        raise NotImplementedError

    async def _next(self, p: Any) -> tuple[dict, bytes]:
        raise NotImplementedError

    _pending: dict[int, Any]
    _closed: bool

    async def proc(self, call: ProcCall, on_event: ProcSink | None = None) -> ProcAnswer:
        header = _header(call)
        if len(call.data) > P.MAX_PAYLOAD:
            raise GuestError("EFBIG", "input larger than one frame")
        if on_event is not None and call.action in ("spawn", "attach", "connect", "watch"):
            return await self._proc_stream(header, call.data, on_event)
        if call.action in ("spawn", "watch"):
            header["attach"] = False
        h, payload = await self.request(header, call.data,
                                        budget=P.MAX_LIST_BYTES + P.MAX_HEADER)
        try:
            if call.action == "poll":
                return ProcAnswer(events=watch_events(json.loads(payload or b"[]")),
                                  overflowed=bool(h.get("overflowed")))
            if call.action == "ps":
                procs = h.get("procs")
                if not isinstance(procs, list):
                    raise TypeError("procs")
                return ProcAnswer(procs=[_info(p) for p in procs[:1024]])
            pid = h.get("pid")
            return ProcAnswer(pid=pid if type(pid) is int else None)
        except (TypeError, ValueError, KeyError, RecursionError) as e:
            raise GuestError("EPROTO", f"unreadable answer: {e}") from None

    async def _proc_stream(self, header: dict, data: bytes, on_event: ProcSink) -> ProcAnswer:
        t0 = time.monotonic()
        rid, p = await self._send(header, data, STREAM_BACKLOG, t0 + 30)
        started = False
        try:
            while True:
                h, payload = await self._next(p)
                kind = h.get("type")
                if kind == "started" and not started and type(h.get("pid")) is int:
                    started = True
                    await on_event(ProcEvent("start", pid=h["pid"]))
                elif kind == "out" and started and h.get("stream") in OUT_STREAMS:
                    if payload:
                        await on_event(ProcEvent(str(h["stream"]), payload))
                elif kind == "exit" and started:
                    code = h.get("code")
                    return ProcAnswer(exit=ExecResult(
                        exit_code=code if type(code) is int else None, stdout=b"", stderr=b"",
                        duration_ms=int((time.monotonic() - t0) * 1000),
                        timed_out=bool(h.get("timed_out")), truncated=p.overflowed))
                else:
                    raise GuestError("EPROTO", f"unexpected {kind!r} frame in a process stream")
        except asyncio.CancelledError:
            await self._detach(rid)
            raise
        finally:
            self._pending.pop(rid, None)

    async def _detach(self, rid: int) -> None:
        if not self._closed:
            try:
                await asyncio.shield(self._send({"op": "detach", "target": rid},
                                                deadline=time.monotonic() + 2))
            except (AgentUnavailable, ConnectionError, asyncio.CancelledError):
                pass

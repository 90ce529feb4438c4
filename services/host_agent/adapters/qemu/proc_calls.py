"""Background process calls on the guest agent channel (a mixin of AgentClient).

What the guest answers is checked like everything else it sends: a stream
that names no pid, output on an unknown stream, a listing that is not a list
of processes are protocol errors. Output is not capped here (a background
process may run for days); the channel's backlog budget bounds what waits."""
from __future__ import annotations

import asyncio
import time
from typing import Any

from guest import protocol as P
from services.host_agent.application.ports import (ExecResult, ProcAnswer, ProcCall, ProcEvent,
                                                   ProcInfo, ProcSink)

from .errors import AgentUnavailable, GuestError

STREAM_BACKLOG = 8 << 20  # output bytes waiting for the consumer before overflow
OUT_STREAMS = ("stdout", "stderr", "pty")


def _header(call: ProcCall) -> dict[str, Any]:
    if call.action == "spawn":
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
    if call.action == "ps":
        return {"op": "ps"}
    if call.action == "connect":
        if call.port is None or not 1 <= call.port <= 65535:
            raise GuestError("EINVAL", "port must be 1..65535")
        return {"op": "connect", "port": call.port,
                **({"timeout_s": call.timeout_s} if call.timeout_s else {})}
    if call.pid is None:
        raise GuestError("EINVAL", f"{call.action} needs a pid")
    h = {"op": call.action, "pid": call.pid}
    if call.action == "input":
        h["eof"] = call.eof
    elif call.action == "signal":
        h["signal"] = call.signal
    elif call.action == "resize" and call.pty is not None:
        h["pty"] = {"cols": call.pty[0], "rows": call.pty[1]}
    elif call.action not in ("attach", "resize"):
        raise GuestError("EINVAL", f"unknown action {call.action!r}")
    return h


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


class ProcCalls:
    async def request(self, header: dict, payload: bytes = b"", timeout: float = 30.0,
                      budget: int = 0) -> tuple[dict, bytes]: ...
    async def _send(self, header: dict, payload: bytes = b"", budget: int = 0,
                    deadline: float | None = None) -> tuple[int, Any]: ...
    async def _next(self, p: Any) -> tuple[dict, bytes]: ...
    _pending: dict[int, Any]
    _closed: bool

    async def proc(self, call: ProcCall, on_event: ProcSink | None = None) -> ProcAnswer:
        header = _header(call)
        if len(call.data) > P.MAX_PAYLOAD:
            raise GuestError("EFBIG", "input larger than one frame")
        if on_event is not None and call.action in ("spawn", "attach", "connect"):
            return await self._proc_stream(header, call.data, on_event)
        if call.action == "spawn":
            header["attach"] = False
        h, _ = await self.request(header, call.data, budget=P.MAX_LIST_BYTES + P.MAX_HEADER)
        try:
            if call.action == "ps":
                procs = h.get("procs")
                if not isinstance(procs, list):
                    raise TypeError("procs")
                return ProcAnswer(procs=[_info(p) for p in procs[:1024]])
            pid = h.get("pid")
            return ProcAnswer(pid=pid if type(pid) is int else None)
        except (TypeError, ValueError, KeyError) as e:
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

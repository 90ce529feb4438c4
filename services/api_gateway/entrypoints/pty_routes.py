"""A terminal in a sandbox over one WebSocket (docs/api-processes.md): binary
messages are the terminal's bytes both ways; text messages are JSON
control (`{"resize": {"cols", "rows"}}`, `{"signal": "SIGINT"}`) from the
client and `{"pid"}` then `{"exit_code", "timed_out"}` from the server."""
from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, WebSocket
from pydantic import ValidationError

from common.rpc import RpcFailure
from contracts.procs import MAX_INPUT, HostProc

from ..adapters.auth_client import Unauthorized
from ..application.errors import UseCaseError
from .middleware import new_op_id
from .pair import both

log = logging.getLogger("corral.gateway.pty")
pty_router = APIRouter()


async def _org(websocket: WebSocket, op_id: str) -> str | None:
    auth = websocket.headers.get("authorization", "")
    if not auth.startswith("Bearer ") or len(auth) > 300:
        return None
    try:
        p = await websocket.app.state.ctx.auth.verify(auth[7:].strip(), op_id)
    except (Unauthorized, RpcFailure):
        return None
    return p.org_id if p.scope == "org" else None


def _int(q: Any, name: str, default: int) -> int:
    try:
        v = int(q.get(name, default))
    except ValueError:
        raise ValueError(f"{name} must be an integer") from None
    if not 1 <= v <= 4096:
        raise ValueError(f"{name} must be 1..4096")
    return v


@pty_router.websocket("/v1/sandboxes/{sandbox_id}/pty")
async def pty(websocket: WebSocket, sandbox_id: str) -> None:
    """A new terminal: `?cols=80&rows=24&user=&cmd=` (cmd: one argument, default
    `bash -l`); `Authorization: Bearer <org key>`."""
    q = websocket.query_params
    try:
        call = {"action": "spawn", "cmd": [q["cmd"]] if q.get("cmd") else ["bash", "-l"],
                "cols": _int(q, "cols", 80), "rows": _int(q, "rows", 24), "stdin": True,
                "env": {"TERM": q.get("term", "xterm-256color")[:64]}}
        if q.get("user"):
            call["user"] = q["user"]
    except ValueError as e:
        await websocket.close(code=1008, reason=str(e)[:100])
        return
    await _session(websocket, sandbox_id, call)


@pty_router.websocket("/v1/sandboxes/{sandbox_id}/processes/{pid}/pty")
async def pty_attach(websocket: WebSocket, sandbox_id: str, pid: int) -> None:
    """An existing process's terminal (or output, and its stdin), from now on."""
    await _session(websocket, sandbox_id, {"action": "attach", "pid": pid})


class _Terminal:
    """One WebSocket and one process stream: output down, input and control up."""

    def __init__(self, websocket: WebSocket, io: Any, org: str, sandbox_id: str,
                 op_id: str, chunks: Any) -> None:
        self.websocket, self.io, self.chunks = websocket, io, chunks
        self.org, self.sandbox_id, self.op_id = org, sandbox_id, op_id
        self.pid = 0

    async def down(self) -> None:
        async for chunk in self.chunks:
            if chunk.stream == "start":
                self.pid = chunk.pid or 0
                await self.websocket.send_text(json.dumps({"pid": self.pid}))
            elif chunk.data_b64:
                await self.websocket.send_bytes(base64.b64decode(chunk.data_b64))
            elif chunk.stream == "exit" and chunk.result is not None:
                await self.websocket.send_text(json.dumps({
                    "exit_code": chunk.result.exit_code, "timed_out": chunk.result.timed_out}))
            elif chunk.stream == "error":
                err = chunk.error
                await self.websocket.send_text(json.dumps({"error": err.detail if err
                                                           else "failed"}))

    async def up(self) -> None:
        while True:
            msg = await self.websocket.receive()
            if msg["type"] == "websocket.disconnect":
                return
            if not self.pid:
                continue  # nothing to type into yet
            try:
                await self._forward(msg)
            except (ValueError, RpcFailure, UseCaseError) as e:  # said; the session goes on
                await self.websocket.send_text(json.dumps(
                    {"error": str(getattr(e, "detail", e))[:300]}))

    async def _forward(self, msg: Mapping[str, Any]) -> None:
        if msg.get("bytes") is not None:
            call = {"action": "input", "pid": self.pid,
                    "data_b64": base64.b64encode(msg["bytes"][:MAX_INPUT]).decode()}
        elif msg.get("text"):
            call = _control(msg["text"], self.pid)
        else:
            return
        await self.io.proc(self.org, self.sandbox_id, self.op_id, call)


async def _session(websocket: WebSocket, sandbox_id: str, call: dict[str, Any]) -> None:
    op_id = new_op_id()
    org = await _org(websocket, op_id)
    if org is None:
        await websocket.close(code=1008, reason="an org API key is required")
        return
    io = websocket.app.state.ctx.io
    try:
        HostProc(sandbox_id=sandbox_id, org_id=org, op_id=op_id, **call)
        chunks = await io.proc_stream(org, sandbox_id, op_id, call)
    except (ValidationError, RpcFailure, UseCaseError) as e:
        await websocket.close(code=1008, reason=str(getattr(e, "detail", e))[:100])
        return
    await websocket.accept()
    term = _Terminal(websocket, io, org, sandbox_id, op_id, chunks)
    try:
        await both(term.up, term.down, log, "terminal session")
    finally:
        await chunks.aclose()  # leaving detaches: the process runs on
        try:
            await websocket.close()
        except RuntimeError:
            pass  # already closed


def _control(text: str, pid: int) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("resize"), dict):
        size = doc["resize"]
        return {"action": "resize", "pid": pid, "cols": size.get("cols"), "rows": size.get("rows")}
    if isinstance(doc, dict) and isinstance(doc.get("signal"), str):
        return {"action": "signal", "pid": pid, "signal": doc["signal"]}
    raise ValueError("a text message is {\"resize\": {cols, rows}} or {\"signal\": NAME}")

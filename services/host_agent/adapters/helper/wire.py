"""Messages between the agent and the helper: one JSON object per
SOCK_SEQPACKET message, file descriptors alongside (SCM_RIGHTS)."""
from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

MAX_MSG = 1 << 20
MAX_FDS = 16


class HelperError(RuntimeError):
    """The helper refused or failed a request; `kind` is the exception's type."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind, self.message = kind, message


async def send(sock: socket.socket, doc: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(doc, separators=(",", ":")).encode()
    if len(data) > MAX_MSG:
        raise ValueError("message too large")
    loop = asyncio.get_running_loop()
    while True:
        try:
            socket.send_fds(sock, [data], list(fds or []))
            return
        except BlockingIOError:
            await _ready(loop.add_writer, loop.remove_writer, sock)


async def recv(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """The next message and its fds; (None, []) when the peer is gone."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MSG, MAX_FDS)
            break
        except BlockingIOError:
            await _ready(loop.add_reader, loop.remove_reader, sock)
    if not data:
        return None, fds
    doc = json.loads(data)
    if not isinstance(doc, dict):
        raise ValueError("a message is a JSON object")
    return doc, fds


async def _ready(add: Any, remove: Any, sock: socket.socket) -> None:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake() -> None:
        if not fut.done():
            fut.set_result(None)
    add(sock.fileno(), wake)
    try:
        await fut
    finally:
        remove(sock.fileno())

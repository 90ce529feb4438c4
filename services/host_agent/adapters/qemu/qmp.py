"""Minimal async QMP client over a unix socket (one command in flight at a time)."""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import socket

from .errors import QmpError

log = logging.getLogger("corral.host_agent.qemu")
MAX_LINE = 1 << 20


class QmpClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._r, self._w = reader, writer
        self._lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self.events: list[dict] = []

    @classmethod
    async def connect(cls, path: str, timeout: float = 10.0) -> QmpClient:
        async with asyncio.timeout(timeout):
            r, w = await asyncio.open_unix_connection(path, limit=MAX_LINE)
            c = cls(r, w)
            greeting = await c._read()
            if "QMP" not in greeting:
                w.close()
                raise QmpError(f"not a QMP greeting: {greeting}")
            await c.execute("qmp_capabilities")
            return c

    async def _read(self) -> dict:
        line = await self._r.readline()
        if not line:
            raise QmpError("QMP connection closed")
        return json.loads(line)

    async def execute(self, command: str, arguments: dict | None = None,
                      timeout: float = 10.0) -> object:
        async with self._lock, asyncio.timeout(timeout):
            cid = next(self._ids)
            msg: dict = {"execute": command, "id": cid}
            if arguments:
                msg["arguments"] = arguments
            self._w.write(json.dumps(msg).encode() + b"\n")
            await self._w.drain()
            return await self._answer(cid, command)

    async def _answer(self, cid: int, command: str) -> object:
        while True:
            resp = await self._read()
            if "event" in resp:
                self.events = (self.events + [resp])[-50:]
                continue
            if resp.get("id") != cid:
                continue
            if "error" in resp:
                raise QmpError(f"{command}: {resp['error'].get('desc')}")
            return resp.get("return")

    async def getfd(self, name: str, fd: int, timeout: float = 10.0) -> None:
        """Hand QEMU a file descriptor (SCM_RIGHTS) under `name` (`fd:name` URIs)."""
        async with self._lock, asyncio.timeout(timeout):
            cid = next(self._ids)
            msg = json.dumps({"execute": "getfd", "arguments": {"fdname": name}, "id": cid})
            sock = self._w.get_extra_info("socket")
            raw = socket.socket(fileno=os.dup(sock.fileno()))
            try:
                socket.send_fds(raw, [msg.encode() + b"\n"], [fd])
            finally:
                raw.close()
            await self._answer(cid, "getfd")

    async def ring(self, device: str = "console", size: int = 16384) -> str:
        """The last output of a ring-buffer character device (the guest console)."""
        r = await self.execute("ringbuf-read", {"device": device, "size": size,
                                                "format": "utf8"}, timeout=3)
        return r if isinstance(r, str) else ""

    async def status(self) -> str:
        r = await self.execute("query-status")
        return r["status"] if isinstance(r, dict) else "unknown"

    async def quit(self) -> None:
        try:
            await self.execute("quit", timeout=5)
        except (QmpError, ConnectionError, TimeoutError):
            pass  # QEMU may close the socket before answering

    async def close(self) -> None:
        """Never waits for the peer."""
        self._w.transport.abort()

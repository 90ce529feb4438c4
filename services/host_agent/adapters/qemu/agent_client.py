"""Host side of the guest agent protocol: multiplexed requests over one unix socket."""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable

from guest import protocol as P
from services.host_agent.application.ports import ExecChunk, ExecRequest, ExecResult, FileEntry

from .errors import AgentUnavailable, GuestError

log = logging.getLogger("corral.host_agent.qemu")
EXEC_GRACE_S = 15.0
_CLOSED = object()


class AgentClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._r, self._w = reader, writer
        self._ids = itertools.count(1)
        self._queues: dict[int, asyncio.Queue] = {}
        self._wlock = asyncio.Lock()
        self._closed = False
        self._reader = asyncio.create_task(self._read_loop())
        self.hello: dict | None = None

    @classmethod
    async def connect(cls, path: str) -> AgentClient:
        r, w = await asyncio.open_unix_connection(path, limit=P.MAX_PAYLOAD + P.MAX_HEADER)
        return cls(r, w)

    @property
    def closed(self) -> bool:
        return self._closed

    async def _read_loop(self) -> None:
        dec = P.Decoder()
        try:
            while True:
                data = await self._r.read(1 << 20)
                if not data:
                    break
                for header, payload in dec.feed(data):
                    rid = header.get("id")
                    q = self._queues.get(rid) if isinstance(rid, int) else None
                    if q is not None:
                        q.put_nowait((header, payload))
        except (P.ProtocolError, ConnectionError, OSError) as e:
            log.warning("guest agent channel broken", extra={"error": str(e)})
        finally:
            self._closed = True
            for q in self._queues.values():
                q.put_nowait(_CLOSED)

    async def _send(self, header: dict, payload: bytes = b"") -> asyncio.Queue:
        if self._closed:
            raise AgentUnavailable("guest agent channel closed")
        rid = next(self._ids)
        q: asyncio.Queue = asyncio.Queue()
        self._queues[rid] = q
        frame = P.encode({**header, "id": rid}, payload)
        async with self._wlock:
            self._w.write(frame)
            await self._w.drain()
        return q

    async def _next(self, q: asyncio.Queue) -> tuple[dict, bytes]:
        item = await q.get()
        if item is _CLOSED:
            raise AgentUnavailable("guest agent channel closed")
        header, payload = item
        if header.get("type") == "error":
            raise _guest_error(header)
        return header, payload

    def _done(self, q: asyncio.Queue) -> None:
        for rid, qq in list(self._queues.items()):
            if qq is q:
                del self._queues[rid]

    async def request(self, header: dict, payload: bytes = b"",
                      timeout: float = 30.0) -> tuple[dict, bytes]:
        q = await self._send(header, payload)
        try:
            async with asyncio.timeout(timeout):
                return await self._next(q)
        finally:
            self._done(q)

    async def handshake(self, timeout: float) -> dict:
        h, _ = await self.request({"op": "hello", "v": P.VERSION}, timeout=timeout)
        return self._check_hello(h)

    def _check_hello(self, h: dict) -> dict:
        if h.get("v") != P.VERSION:
            raise GuestError("EPROTO", f"guest speaks protocol v{h.get('v')}")
        self.hello = h
        return h

    @staticmethod
    def _configure_header(env: dict[str, str] | None, hostname: str | None,
                          time_ns: int | None, net: dict | None) -> dict:
        hdr: dict = {"op": "configure"}
        if env is not None:
            hdr["env"] = env
        if hostname:
            hdr["hostname"] = hostname
        if time_ns is not None:
            hdr["time_ns"] = int(time_ns)
        if net is not None:
            hdr["net"] = net
        return hdr

    async def configure(self, env: dict[str, str] | None = None, hostname: str | None = None,
                        entropy: bytes = b"", time_ns: int | None = None,
                        net: dict | None = None) -> dict:
        """Sandbox-wide state; after a restore also the clone's identity: `entropy`
        (credited to the kernel pool + CRNG reseed), wall clock, eth0 MAC/IP/route."""
        h, _ = await self.request(self._configure_header(env, hostname, time_ns, net), entropy)
        return h

    async def handshake_configure(self, timeout: float, env: dict[str, str] | None = None,
                                  hostname: str | None = None, entropy: bytes = b"",
                                  time_ns: int | None = None, net: dict | None = None,
                                  configure_timeout: float = 30.0) -> tuple[dict, dict]:
        """`hello` and `configure` pipelined: both frames go out at once, the guest
        handles them in order, so a restore pays one round trip instead of two.
        The hello answer is still checked (version) before configure's is used.
        TimeoutError from the hello wait is raised as is; `time_ns` is taken
        at send time either way."""
        hq = await self._send({"op": "hello", "v": P.VERSION})
        cq = None
        try:
            cq = await self._send(self._configure_header(env, hostname, time_ns, net), entropy)
            async with asyncio.timeout(timeout):
                h, _ = await self._next(hq)
            self._check_hello(h)
            async with asyncio.timeout(configure_timeout):
                c, _ = await self._next(cq)
            return h, c
        finally:
            self._done(hq)
            if cq is not None:
                self._done(cq)

    async def exec(self, req: ExecRequest,
                   on_chunk: Callable[[ExecChunk], Awaitable[None]] | None = None) -> ExecResult:
        if not req.cmd:
            raise GuestError("EINVAL", "empty command")
        if req.stdin is not None and len(req.stdin) > P.MAX_PAYLOAD:
            raise GuestError("EFBIG", "stdin larger than one frame")
        if req.cwd is not None:
            P.check_path(req.cwd)
        hdr = {"op": "exec", "argv": list(req.cmd), "env": dict(req.env), "cwd": req.cwd,
               "timeout_s": req.timeout_s, "output_cap": req.output_cap,
               "stdin": req.stdin is not None}
        t0 = time.monotonic()
        q = await self._send(hdr, req.stdin or b"")
        out = {"stdout": bytearray(), "stderr": bytearray()}
        try:
            async with asyncio.timeout(req.timeout_s + EXEC_GRACE_S):
                while True:
                    h, payload = await self._next(q)
                    if h.get("type") == "out":
                        stream = h.get("stream")
                        if stream not in ("stdout", "stderr"):
                            raise GuestError("EPROTO", f"output on unknown stream {stream!r}")
                        out[stream] += payload
                        if on_chunk is not None:
                            await on_chunk(ExecChunk(stream, payload))
                    elif h.get("type") == "exit":
                        return ExecResult(
                            exit_code=h.get("code"), stdout=bytes(out["stdout"]),
                            stderr=bytes(out["stderr"]),
                            duration_ms=int((time.monotonic() - t0) * 1000),
                            timed_out=bool(h.get("timed_out")),
                            truncated=bool(h.get("truncated")))
        except asyncio.CancelledError:
            await self._cancel(q)
            raise
        finally:
            self._done(q)

    async def _cancel(self, q: asyncio.Queue) -> None:
        rid = next((r for r, qq in self._queues.items() if qq is q), None)
        if rid is not None and not self._closed:
            try:
                await asyncio.shield(self._send({"op": "cancel", "target": rid}))
            except (AgentUnavailable, ConnectionError, asyncio.CancelledError):
                pass

    async def put_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        P.check_path(path)
        if len(data) > P.MAX_FILE:
            raise GuestError("EFBIG", f"file larger than {P.MAX_FILE} bytes")
        await self.request({"op": "put", "path": path, "mode": mode}, data, timeout=120)

    async def get_file(self, path: str, max_bytes: int = P.MAX_FILE) -> bytes:
        P.check_path(path)
        _, payload = await self.request({"op": "get", "path": path, "max_bytes": max_bytes},
                                        timeout=120)
        return payload

    async def list_files(self, path: str) -> list[FileEntry]:
        P.check_path(path)
        h, _ = await self.request({"op": "list", "path": path})
        return [FileEntry(e["name"], int(e["size"]), bool(e["is_dir"]), int(e["mode"]))
                for e in h.get("entries", [])]

    async def close(self) -> None:
        self._w.close()
        try:
            await self._w.wait_closed()
        except (ConnectionError, OSError):
            pass
        self._reader.cancel()
        try:
            await self._reader
        except asyncio.CancelledError:
            pass


def _guest_error(h: dict) -> GuestError:
    code = str(h.get("code", "EIO"))
    msg = str(h.get("message", ""))
    if code in ("EINVAL", "ENAMETOOLONG") and "path" in msg:
        return P.GuestPathError(code, msg)
    return GuestError(code, msg)

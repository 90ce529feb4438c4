"""Host side of the guest agent protocol: multiplexed requests over one unix socket.

The guest is root in its VM and may be hostile, so this side trusts nothing
it sends: every request has a byte budget for its answers (what exceeds it
is dropped and flagged), answers for unknown or finished requests are
dropped, a frame with an unreadable header is skipped, and a peer that keeps
overrunning is cut off. Sending has a deadline too (a guest that stops
reading cannot hold the write lock), and closing never waits for the peer.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from guest import protocol as P
from services.host_agent.application.ports import (ExecChunk, ExecRequest, ExecResult)

from .errors import AgentUnavailable, GuestError
from .file_calls import FileCalls
from .proc_calls import ProcCalls

log = logging.getLogger("corral.host_agent.qemu")
EXEC_GRACE_S = 15.0
STALL_S = 5.0  # a guest that reads none of a frame for this long is gone
SMALL_ANSWER = 256 * 1024  # budget of a request whose answer is one small frame
MAX_DROPPED = 256 << 20  # bytes overrunning budgets before the channel is cut
TERMINAL = frozenset({"ok", "hello", "data", "entries", "exit", "error"})
_CLOSED = object()


@dataclass
class _Pending:
    """One request's answers as they arrive, within its byte budget."""
    budget: int
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    queued: int = 0  # payload bytes waiting in `queue`
    overflowed: bool = False
    done: bool = False  # its terminal frame arrived: later ones are lies


class AgentClient(ProcCalls, FileCalls):
    exec_grace_s = EXEC_GRACE_S  # an exec's deadline: its timeout plus this

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._r, self._w = reader, writer
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._wlock = asyncio.Lock()
        self._closed = False
        self.dropped = 0  # bytes of answers dropped (over budget, unknown ids)
        self._reader = asyncio.create_task(self._read_loop())
        self.hello: dict | None = None

    @classmethod
    async def connect(cls, path: str) -> AgentClient:
        r, w = await asyncio.open_unix_connection(path, limit=P.MAX_PAYLOAD + P.MAX_HEADER)
        return cls(r, w)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- reading ------------------------------------------------------------------
    async def _read_loop(self) -> None:
        dec = P.Decoder()
        try:
            while not self._closed:
                data = await self._r.read(1 << 20)
                if not data:
                    break
                for header, payload in dec.feed(data):
                    self._route(header, payload)
                if dec.skipped:
                    log.warning("guest agent sent %d unreadable frame(s): %s",
                                len(dec.skipped), dec.skipped[-1])
                    if len(dec.skipped) > P.MAX_BAD_FRAMES:
                        raise P.ProtocolError("too many unreadable frames")
                if self.dropped > MAX_DROPPED:
                    raise P.ProtocolError(f"{self.dropped} bytes over budget: cut off")
        except (P.ProtocolError, ConnectionError, OSError) as e:
            log.warning("guest agent channel broken", extra={"error": str(e)})
        except Exception as e:  # logged with its traceback: nothing a peer sends is quiet
            log.exception("guest agent channel failed", extra={"error": repr(e)})
        finally:
            self._shut()

    def _route(self, header: dict, payload: bytes) -> None:
        rid = header.get("id")
        p = self._pending.get(rid) if type(rid) is int else None
        if p is None or p.done:
            self.dropped += len(payload) + 64
            return
        terminal = header.get("type") in TERMINAL
        if p.queued + len(payload) > p.budget:
            p.overflowed = True
            self.dropped += len(payload)
            if not terminal:
                return
            header, payload = {"id": rid, "type": "error", "code": "EFBIG",
                               "message": "answer over its size limit"}, b""
        p.done = terminal
        p.queued += len(payload)
        p.queue.put_nowait((header, payload))

    async def _next(self, p: _Pending) -> tuple[dict, bytes]:
        item = await p.queue.get()
        if item is _CLOSED:
            raise AgentUnavailable("guest agent channel closed")
        header, payload = item
        p.queued -= len(payload)
        if header.get("type") == "error":
            raise _guest_error(header)
        return header, payload

    # -- writing ------------------------------------------------------------------
    async def _send(self, header: dict, payload: bytes = b"", budget: int = SMALL_ANSWER,
                    deadline: float | None = None) -> tuple[int, _Pending]:
        """Register the request and write its frame before `deadline` (monotonic);
        a write that cannot finish in time leaves the framing unknown: the
        channel is cut (AgentUnavailable)."""
        if self._closed:
            raise AgentUnavailable("guest agent channel closed")
        rid = next(self._ids)
        p = self._pending[rid] = _Pending(budget)
        frame = P.encode({**header, "id": rid}, payload)
        try:
            async with asyncio.timeout_at(_loop_time(deadline)):
                async with self._wlock:
                    if self._closed:
                        raise AgentUnavailable("guest agent channel closed")
                    self._w.write(frame)
                    await self._drain()
        except TimeoutError:
            self._pending.pop(rid, None)
            self._abort()
            raise AgentUnavailable("guest agent does not read its channel") from None
        except BaseException:
            self._pending.pop(rid, None)
            raise
        return rid, p

    async def _drain(self) -> None:
        """Until the frame is out, as long as the guest keeps reading: a guest
        that reads nothing for STALL_S is taken as gone (TimeoutError)."""
        transport = self._w.transport
        while True:
            before = transport.get_write_buffer_size()
            try:
                await asyncio.wait_for(self._w.drain(), STALL_S)
                return
            except TimeoutError:
                if transport.get_write_buffer_size() >= before:
                    raise

    async def request(self, header: dict, payload: bytes = b"", timeout: float = 30.0,
                      budget: int = SMALL_ANSWER) -> tuple[dict, bytes]:
        deadline = time.monotonic() + timeout
        rid, p = await self._send(header, payload, budget, deadline)
        try:
            async with asyncio.timeout_at(_loop_time(deadline)):
                return await self._next(p)
        finally:
            self._pending.pop(rid, None)

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
                          time_ns: int | None, net: dict | None,
                          defaults: dict[str, str] | None = None) -> dict:
        hdr: dict = {"op": "configure", **(defaults or {})}
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
                        net: dict | None = None, defaults: dict[str, str] | None = None) -> dict:
        """Sandbox-wide state (env; `defaults`: the image's cwd and user for execs);
        after a restore also the clone's identity: `entropy` (credited to the
        kernel pool + CRNG reseed), wall clock, eth0 MAC/IP/route."""
        h, _ = await self.request(self._configure_header(env, hostname, time_ns, net, defaults),
                                  entropy)
        return h

    async def handshake_configure(self, timeout: float, env: dict[str, str] | None = None,
                                  hostname: str | None = None, entropy: bytes = b"",
                                  time_ns: int | None = None, net: dict | None = None,
                                  configure_timeout: float = 30.0,
                                  defaults: dict[str, str] | None = None) -> tuple[dict, dict]:
        """`hello` and `configure` pipelined: both frames go out at once, the guest
        handles them in order, so a restore pays one round trip instead of two.
        The hello answer is still checked (version) before configure's is used.
        TimeoutError from the hello wait is raised as is; `time_ns` is taken
        at send time either way."""
        deadline = time.monotonic() + timeout
        hid, hp = await self._send({"op": "hello", "v": P.VERSION}, deadline=deadline)
        cid = None
        try:
            cid, cp = await self._send(self._configure_header(env, hostname, time_ns, net,
                                                              defaults),
                                       entropy, deadline=deadline)
            async with asyncio.timeout_at(_loop_time(deadline)):
                h, _ = await self._next(hp)
            self._check_hello(h)
            async with asyncio.timeout(configure_timeout):
                c, _ = await self._next(cp)
            return h, c
        finally:
            self._pending.pop(hid, None)
            if cid is not None:
                self._pending.pop(cid, None)

    async def exec(self, req: ExecRequest,
                   on_chunk: Callable[[ExecChunk], Awaitable[None]] | None = None) -> ExecResult:
        """Output beyond `req.output_cap` per stream is dropped here whatever
        the guest sends (`truncated`); the whole call ends by its deadline."""
        if not req.cmd:
            raise GuestError("EINVAL", "empty command")
        if req.stdin is not None and len(req.stdin) > P.MAX_PAYLOAD:
            raise GuestError("EFBIG", "stdin larger than one frame")
        if req.cwd is not None:
            P.check_path(req.cwd)
        hdr = {"op": "exec", "argv": list(req.cmd), "env": dict(req.env), "cwd": req.cwd,
               **({"user": req.user} if req.user else {}),
               "timeout_s": req.timeout_s, "output_cap": req.output_cap,
               "stdin": req.stdin is not None}
        t0 = time.monotonic()
        deadline = t0 + req.timeout_s + self.exec_grace_s
        rid, p = await self._send(hdr, req.stdin or b"", 2 * req.output_cap + (1 << 20),
                                  deadline)
        out = {"stdout": bytearray(), "stderr": bytearray()}
        cut = False
        try:
            async with asyncio.timeout_at(_loop_time(deadline)):
                while True:
                    h, payload = await self._next(p)
                    if h.get("type") == "out":
                        stream = h.get("stream")
                        if stream not in ("stdout", "stderr"):
                            raise GuestError("EPROTO", f"output on unknown stream {stream!r}")
                        keep = payload[:max(req.output_cap - len(out[stream]), 0)]
                        if len(keep) < len(payload):  # an honest guest stops at the cap
                            cut = True
                            self.dropped += len(payload) - len(keep)
                        if keep:
                            out[stream] += keep
                            if on_chunk is not None:
                                await on_chunk(ExecChunk(stream, keep))
                    elif h.get("type") == "exit":
                        code = h.get("code")
                        return ExecResult(
                            exit_code=code if type(code) is int else None,
                            stdout=bytes(out["stdout"]), stderr=bytes(out["stderr"]),
                            duration_ms=int((time.monotonic() - t0) * 1000),
                            timed_out=bool(h.get("timed_out")),
                            truncated=bool(h.get("truncated")) or cut or p.overflowed)
        except asyncio.CancelledError:
            await self._cancel(rid)
            raise
        finally:
            self._pending.pop(rid, None)

    async def _cancel(self, rid: int) -> None:
        if not self._closed:
            try:
                await asyncio.shield(self._send({"op": "cancel", "target": rid},
                                                deadline=time.monotonic() + 2))
            except (AgentUnavailable, ConnectionError, asyncio.CancelledError):
                pass

    # -- closing ------------------------------------------------------------------
    def _shut(self) -> None:
        self._closed = True
        for p in self._pending.values():
            p.queue.put_nowait(_CLOSED)

    def _abort(self) -> None:
        """Cut the channel now, unsent data or not."""
        self._shut()
        self._w.transport.abort()

    async def close(self) -> None:
        """Never waits for the peer: whatever is unsent is dropped."""
        self._abort()
        self._reader.cancel()
        try:
            await self._reader
        except asyncio.CancelledError:
            pass


def _loop_time(deadline: float | None) -> float | None:
    """A time.monotonic() deadline on the event loop's clock (asyncio.timeout_at)."""
    if deadline is None:
        return None
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())


def _guest_error(h: dict) -> GuestError:
    code = str(h.get("code", "EIO"))[:32]
    msg = str(h.get("message", ""))[:1000]
    if code in ("EINVAL", "ENAMETOOLONG") and "path" in msg:
        return P.GuestPathError(code, msg)
    return GuestError(code, msg)

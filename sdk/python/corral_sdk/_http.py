"""Shared, I/O-free request logic plus two tiny drivers (sync and async).

Every SDK operation is a generator that yields *steps* (send a request, sleep,
read a stream chunk, call a user callback) and returns its result. The sync
driver runs it with httpx.Client, the async one with httpx.AsyncClient, so
request building, retries, error mapping and SSE parsing exist exactly once.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import random
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import httpx

from .config import Config
from .errors import (CorralConnectionError, CorralError, RateLimitError, SandboxFailedError,
                     SandboxTimeoutError, StreamError, error_from_problem)
from .sse import SSEDecoder, SSEEvent

USER_AGENT = "corral-python/0.1"
RETRY_STATUS = (502, 503, 504)
RETRY_EXC = (httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadError,
             httpx.RemoteProtocolError, httpx.PoolTimeout)


# ---- steps ---------------------------------------------------------------
@dataclass
class Call:
    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    stream: bool = False


@dataclass
class Sleep:
    seconds: float


@dataclass
class Read:
    """Next chunk of a streamed response body; b"" at the end."""
    response: httpx.Response


@dataclass
class Emit:
    """Call a user callback (awaited if it returns an awaitable)."""
    fn: Callable[[Any], Any]
    arg: Any


Op = Generator[Any, Any, Any]


# ---- retries and errors --------------------------------------------------
@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter for idempotent requests."""
    retries: int = 3
    base: float = 0.25
    cap: float = 4.0
    max_retry_after: float = 10.0

    def delay(self, attempt: int, err: CorralError | None = None) -> float:
        if isinstance(err, RateLimitError) and err.retry_after is not None:
            return err.retry_after
        return min(self.cap, self.base * 2 ** attempt) * (0.5 + random.random() / 2)

    def should_retry(self, attempt: int, err: BaseException) -> bool:
        if attempt >= self.retries:
            return False
        if isinstance(err, (SandboxFailedError, SandboxTimeoutError)):
            return False  # final answers, not transient failures
        if isinstance(err, RateLimitError):
            return err.retry_after is not None and err.retry_after <= self.max_retry_after
        if isinstance(err, CorralError):
            return err.status in RETRY_STATUS
        return isinstance(err, RETRY_EXC)


def raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        body = resp.json()
    except ValueError:
        body = None
    raise error_from_problem(resp.status_code, body, resp.headers, resp.text)


def request(call: Call, retry: RetryPolicy | None = None) -> Op:
    """Send `call`, retrying per `retry` (None: never); returns the response."""
    attempt = 0
    while True:
        try:
            resp = yield call
            raise_for(resp)
            return resp
        except (CorralError, httpx.TransportError) as e:
            if retry is None or not retry.should_retry(attempt, e):
                if isinstance(e, httpx.TransportError):
                    raise CorralConnectionError(f"{call.method} {call.path}: {e!r}") from e
                raise
            yield Sleep(retry.delay(attempt, e if isinstance(e, CorralError) else None))
            attempt += 1


def read_all(resp: httpx.Response) -> Op:
    chunks = []
    while chunk := (yield Read(resp)):
        chunks.append(chunk)
    return b"".join(chunks)


# ---- drivers -------------------------------------------------------------
class _Driver:
    _client_cls: Any  # httpx.Client (sync driver) or httpx.AsyncClient (async driver)

    def __init__(self, config: Config, retry: RetryPolicy | None = None,
                 transport: Any = None, timeout: float = 30.0):
        self.config = config
        self.retry = retry or RetryPolicy()
        self.client: Any = self._client_cls(
            base_url=config.api_url, timeout=timeout, transport=transport,
            headers={"Authorization": f"Bearer {config.api_key}", "User-Agent": USER_AGENT})

    def _build(self, c: Call) -> httpx.Request:
        return self.client.build_request(
            c.method, c.path, params=c.params, json=c.json, content=c.content,
            headers=c.headers,
            timeout=c.timeout if c.timeout is not None else httpx.USE_CLIENT_DEFAULT)

    @staticmethod
    def _advance(gen: Op, value: Any, exc: BaseException | None) -> tuple[bool, Any]:
        try:
            return False, gen.throw(exc) if exc is not None else gen.send(value)
        except StopIteration as stop:
            return True, stop.value
        except httpx.TransportError as e:
            raise CorralConnectionError(f"connection failed: {e!r}") from e


class SyncDriver(_Driver):
    _client_cls = httpx.Client

    def run(self, gen: Op) -> Any:
        streams: dict[int, Any] = {}
        value, exc = None, None
        try:
            while True:
                done, step = self._advance(gen, value, exc)
                if done:
                    return step
                value, exc = None, None
                try:
                    value = self._do(step, streams)
                except httpx.TransportError as e:
                    exc = e
        finally:
            gen.close()
            for resp, _ in streams.values():
                resp.close()

    def _do(self, step: Any, streams: dict) -> Any:
        if isinstance(step, Call):
            resp = self.client.send(self._build(step), stream=step.stream)
            if step.stream:
                streams[id(resp)] = (resp, resp.iter_bytes())
                if resp.status_code >= 400:
                    resp.read()
            return resp
        if isinstance(step, Read):
            return next(streams[id(step.response)][1], b"")
        if isinstance(step, Sleep):
            return time.sleep(step.seconds)
        if isinstance(step, Emit):
            return step.fn(step.arg)
        raise TypeError(f"unknown step {step!r}")

    def close(self) -> None:
        self.client.close()


class AsyncDriver(_Driver):
    _client_cls = httpx.AsyncClient

    async def run(self, gen: Op) -> Any:
        streams: dict[int, Any] = {}
        value, exc = None, None
        try:
            while True:
                done, step = self._advance(gen, value, exc)
                if done:
                    return step
                value, exc = None, None
                try:
                    value = await self._do(step, streams)
                except httpx.TransportError as e:
                    exc = e
        finally:
            gen.close()
            for resp, _ in streams.values():
                await resp.aclose()

    async def _do(self, step: Any, streams: dict) -> Any:
        if isinstance(step, Call):
            resp = await self.client.send(self._build(step), stream=step.stream)
            if step.stream:
                streams[id(resp)] = (resp, resp.aiter_bytes())
                if resp.status_code >= 400:
                    await resp.aread()
            return resp
        if isinstance(step, Read):
            try:
                return await streams[id(step.response)][1].__anext__()
            except StopAsyncIteration:
                return b""
        if isinstance(step, Sleep):
            return await asyncio.sleep(step.seconds)
        if isinstance(step, Emit):
            out = step.fn(step.arg)
            return await out if inspect.isawaitable(out) else out
        raise TypeError(f"unknown step {step!r}")

    async def close(self) -> None:
        await self.client.aclose()


def parse_json(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError as e:
        raise CorralError(f"expected JSON from {resp.request.url.path}, got "
                          f"{resp.headers.get('content-type')!r}", status=resp.status_code,
                          op_id=resp.headers.get("x-op-id")) from e


# ---- exec results ----------------------------------------------------------
@dataclass
class ExecResult:
    exit_code: int | None
    stdout: str
    stderr: str
    duration_ms: int
    timed_out: bool
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    @classmethod
    def from_json(cls, doc: dict) -> ExecResult:
        return cls(doc.get("exit_code"), doc.get("stdout", ""), doc.get("stderr", ""),
                   int(doc.get("duration_ms") or 0), bool(doc.get("timed_out")),
                   bool(doc.get("truncated")))


def event_doc(ev: SSEEvent) -> dict:
    """An event's JSON; an `error` event raised as the error it carries."""
    try:
        doc = json.loads(ev.data)
    except ValueError:
        raise StreamError(f"malformed {ev.event} event: {ev.data[:200]!r}") from None
    if not isinstance(doc, dict):
        raise StreamError(f"malformed {ev.event} event: {ev.data[:200]!r}")
    if ev.event == "error":
        raise error_from_problem(int(doc.get("status") or 500), doc)
    return doc


class ExecCollector:
    """Folds streamed exec events into an ExecResult, keeping at most `cap`
    characters per stream (the rest is dropped and flagged `truncated`)."""

    def __init__(self, cap: int = 1 << 20):
        self.cap = cap
        self.parts: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self.sizes = {"stdout": 0, "stderr": 0}
        self.truncated = False
        self.exit: dict | None = None

    def on(self, ev: SSEEvent) -> tuple[str, str] | None:
        """Returns (stream, text) for output chunks; raises on `error`."""
        if ev.event not in ("stdout", "stderr", "exit", "error"):
            return None
        doc = event_doc(ev)
        if ev.event == "exit":
            self.exit = doc
            return None
        text = str(doc.get("data", ""))
        room = self.cap - self.sizes[ev.event]
        if len(text) > room:
            self.truncated = True
        kept = text[:max(room, 0)]
        self.parts[ev.event].append(kept)
        self.sizes[ev.event] += len(kept)
        return ev.event, text

    def result(self) -> ExecResult:
        doc = dict(self.exit or {})
        doc["stdout"], doc["stderr"] = "".join(self.parts["stdout"]), "".join(self.parts["stderr"])
        res = ExecResult.from_json(doc)
        res.truncated = res.truncated or self.truncated
        return res


def exec_stream(call: Call, callbacks: dict[str, Callable[[str], Any] | None], cap: int) -> Op:
    """Streaming exec: SSE when the server speaks it, else the plain JSON reply
    (callbacks then get the whole output once)."""
    resp = yield from request(call)
    if "text/event-stream" not in resp.headers.get("content-type", ""):
        res = ExecResult.from_json(json.loads((yield from read_all(resp)) or b"{}"))
        for name in ("stdout", "stderr"):
            if (cb := callbacks.get(name)) and getattr(res, name):
                yield Emit(cb, getattr(res, name))
        return res
    dec, col = SSEDecoder(), ExecCollector(cap)
    while True:
        chunk = yield Read(resp)
        for ev in (dec.feed(chunk) if chunk else dec.close()):
            out = col.on(ev)
            if out and (cb := callbacks.get(out[0])):
                yield Emit(cb, out[1])
            if col.exit is not None:
                return col.result()
        if not chunk:
            raise StreamError("exec stream ended without an exit event",
                              op_id=resp.headers.get("x-op-id"))

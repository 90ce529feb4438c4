"""Core-NATS request/reply with contract payloads, both sides.

Client: `request` (and `RpcClient`, the base of every adapter that calls
another service) sends a `RpcModel` and returns the parsed reply, or raises
`RpcFailure(code, detail)` for an `RpcError` reply, a timeout / no responder
("unavailable"), or a malformed or oversized reply ("internal"). Replies are
size-limited before parsing: a peer's response is never trusted.

Server: `serve` answers a set of subjects; `answer` validates one request,
runs the use case and always produces a reply.
"""
from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from pydantic import ValidationError

from contracts.rpc import RpcError, RpcModel

from . import rpc_parts as parts
from .logging import log_context
from .tracing import current_traceparent

log = logging.getLogger("corral.rpc")

T = TypeVar("T", bound=RpcModel)
MAX_REPLY_BYTES = 64 * 1024


class RpcFailure(Exception):
    """A failed call. `code` is stable: invalid, not_found, conflict,
    unauthorized, internal, or unavailable (nobody answered in time)."""

    def __init__(self, code: str, detail: str = ""):
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail


def _parse(data: bytes, reply_type: type[T], max_bytes: int) -> T:
    if len(data) > max_bytes:
        raise RpcFailure("internal", "reply too large")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RpcFailure("internal", "reply is not JSON") from None
    if isinstance(doc, dict) and "error" in doc:
        try:
            err = RpcError.model_validate(doc)
        except ValidationError:
            raise RpcFailure("internal", "malformed error reply") from None
        raise RpcFailure(err.error, err.detail[:500])
    try:
        return reply_type.model_validate(doc)
    except ValidationError:
        raise RpcFailure("internal", f"malformed {reply_type.__name__} reply") from None


def _trace_headers() -> dict[str, str] | None:
    tp = current_traceparent()
    return {"traceparent": tp} if tp else None


async def request(nc: Client, subject: str, model: RpcModel, reply_type: type[T],
                  timeout: float = 2.0, max_bytes: int = MAX_REPLY_BYTES) -> T:
    body = model.model_dump_json().encode()
    if len(body) <= parts.part_size(nc) and max_bytes <= parts.part_size(nc):
        try:  # fits one message both ways: the shared reply inbox
            msg = await nc.request(subject, body, timeout=timeout, headers=_trace_headers())
        except NoRespondersError:
            raise RpcFailure("unavailable", f"no responders on {subject}") from None
        except NatsTimeout:
            raise RpcFailure("unavailable", f"{subject} timed out") from None
        return _parse(msg.data, reply_type, max_bytes)
    stream = await open_stream(nc, subject, model, timeout, max_bytes)
    try:
        return await stream.answer(reply_type)
    finally:
        await stream.close()


async def patient_request(nc: Client, subject: str, model: RpcModel, reply_type: type[T],
                          timeout: float, patience_s: float, first_delay_s: float = 0.02,
                          max_bytes: int = MAX_REPLY_BYTES) -> T:
    """`request`, with `conflict` (the responder has not yet seen what the ask
    depends on) and `unavailable` retried, backing off, for `patience_s`;
    any other failure is final."""
    deadline = time.monotonic() + patience_s
    delay = first_delay_s
    while True:
        try:
            return await request(nc, subject, model, reply_type, timeout, max_bytes)
        except RpcFailure as e:
            if e.code not in ("conflict", "unavailable") or time.monotonic() + delay > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


class Stream:
    """A request whose answer may come in parts and be followed by more
    messages (a streamed result): read `answer()`, then `next()` until done."""

    def __init__(self, sub: Subscription, subject: str, deadline: float, max_bytes: int):
        self.sub, self.subject, self.deadline, self.max_bytes = sub, subject, deadline, max_bytes

    async def first(self) -> bytes:
        try:
            return (await parts.read_body(self.sub, self.max_bytes, self.deadline)).data
        except parts.NoResponders:
            raise RpcFailure("unavailable", f"no responders on {self.subject}") from None
        except TimeoutError:
            raise RpcFailure("unavailable", f"{self.subject} timed out") from None
        except parts.PartsError as e:
            raise RpcFailure("internal", f"reply: {e}") from None

    async def answer(self, reply_type: type[T]) -> T:
        """The answer, parsed (RpcFailure for an error reply)."""
        return _parse(await self.first(), reply_type, self.max_bytes)

    async def next(self, deadline: float, max_bytes: int | None = None) -> bytes:
        """The next message after the answer; TimeoutError at `deadline`."""
        try:
            return (await parts.read_body(self.sub, max_bytes or self.max_bytes,
                                          deadline)).data
        except (parts.NoResponders, parts.PartsError) as e:
            raise RpcFailure("internal", f"stream: {e}") from None

    async def close(self) -> None:
        await parts.discard(self.sub)


async def open_stream(nc: Client, subject: str, model: RpcModel, timeout: float,
                      max_bytes: int, pending_bytes: int = 64 << 20) -> Stream:
    """Send `model` (in parts if it must be) with a reply inbox of its own."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, pending_bytes_limit=pending_bytes)
    try:
        await parts.publish_parts(nc, subject, model.model_dump_json().encode(), reply=inbox,
                                  headers=_trace_headers())
    except BaseException:
        await parts.discard(sub)
        raise
    return Stream(sub, subject, time.monotonic() + timeout, max_bytes)


class RpcClient:
    """Base of the adapters that call another service's request/reply subjects."""

    def __init__(self, nc: Client, timeout_s: float = 2.0) -> None:
        self.nc = nc
        self.timeout_s = timeout_s

    async def call(self, subject: str, model: RpcModel, reply_type: type[T],
                   timeout: float | None = None, max_bytes: int = MAX_REPLY_BYTES) -> T:
        return await request(self.nc, subject, model, reply_type, timeout or self.timeout_s,
                             max_bytes)


Send = Callable[[RpcModel], Awaitable[None]]
_subject: contextvars.ContextVar[str] = contextvars.ContextVar("rpc_subject", default="")


@dataclass
class Reply:
    """An answer, and work to run once it is sent: `then(send)` may send more
    messages to the requester (a stream's chunks), each in parts if need be."""
    model: RpcModel
    then: Callable[[Send], Awaitable[None]] | None = None


Refuse = Callable[[Exception], RpcError | None]
Call = Callable[[Any], Awaitable[RpcModel | Reply]]
Route = tuple[type[RpcModel], Call]


def _no_refusal(e: Exception) -> RpcError | None:
    return None


async def answer(body: bytes, req_type: type[T], call: Callable[[T], Awaitable[RpcModel | Reply]],
                 max_bytes: int, refuse: Refuse = _no_refusal) -> RpcModel | Reply:
    """Server side: validate a request, run `call`, and always reply.

    `refuse` maps a use-case exception to a stable RpcError; anything else is
    logged and answered as "internal" without leaking details."""
    if len(body) > max_bytes:
        return RpcError(error="invalid", detail="request too large")
    try:
        req = req_type.model_validate_json(body)
    except ValidationError as e:
        fields = ", ".join(".".join(map(str, err["loc"])) or "body" for err in e.errors()[:8])
        return RpcError(error="invalid", detail=f"invalid {req_type.__name__}: {fields}")
    with log_context(op_id=getattr(req, "op_id", None),
                     sandbox_id=getattr(req, "sandbox_id", None)):
        try:
            return await call(req)
        except Exception as e:
            known = refuse(e)
            if known is not None:
                return known
            log.exception("%s failed", req_type.__name__)
            return RpcError(error="internal", detail="internal error")


def request_subject() -> str:
    """In a use case called by `serve`: the subject the request came on (a
    route may be a wildcard; permissions make some tokens authentic)."""
    return _subject.get()


async def serve(nc: Client, routes: dict[str, Route], stop: asyncio.Event, *,
                max_bytes: int, queue: str = "", refuse: Refuse = _no_refusal,
                limit: int = 0) -> None:
    """Answer every subject in `routes` (wildcards allowed) until `stop`, each
    request in its own task (`queue`: share the subjects with other instances;
    `limit`: at most that many in flight, beyond it requests are refused
    `busy`). Requests and answers larger than one bus message travel in parts.
    In-flight requests finish before this returns."""
    tasks: set[asyncio.Task[None]] = set()
    assembler = parts.Assembler(max_bytes)

    async def send_to(reply: str, model: RpcModel) -> None:
        await parts.publish_parts(nc, reply, model.model_dump_json().encode())

    async def reply_to(route: Route, msg: Msg, body: bytes) -> None:
        req_type, call = route
        _subject.set(msg.subject)
        out = await answer(body, req_type, call, max_bytes, refuse)
        reply = out if isinstance(out, Reply) else Reply(out)
        try:
            await send_to(msg.reply, reply.model)
        except Exception as e:  # noqa: BLE001 - requester gone or bus down
            log.warning("could not answer %s: %r", msg.subject, e)
            return
        if reply.then is not None:
            await reply.then(functools.partial(send_to, msg.reply))

    async def on_msg(route: Route, msg: Msg) -> None:
        if not msg.reply:
            return  # nobody to answer
        try:
            body = assembler.add(msg)
        except parts.PartsError as e:
            body = None
            await send_to(msg.reply, RpcError(error="invalid", detail=str(e)))
        if body is None:
            return
        if limit and len(tasks) >= limit:
            await send_to(msg.reply, RpcError(error="busy", detail="too many requests in flight"))
            return
        t = asyncio.ensure_future(reply_to(route, msg, body))
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    subs = [await nc.subscribe(subject, queue=queue, cb=functools.partial(on_msg, route))
            for subject, route in routes.items()]
    try:
        await stop.wait()
    finally:
        for sub in subs:
            await sub.unsubscribe()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

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
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from pydantic import ValidationError

from contracts.rpc import RpcError, RpcModel

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


async def request(nc: Client, subject: str, model: RpcModel, reply_type: type[T],
                  timeout: float = 2.0, max_bytes: int = MAX_REPLY_BYTES) -> T:
    tp = current_traceparent()
    try:
        msg = await nc.request(subject, model.model_dump_json().encode(), timeout=timeout,
                               headers={"traceparent": tp} if tp else None)
    except NoRespondersError:
        raise RpcFailure("unavailable", f"no responders on {subject}") from None
    except NatsTimeout:
        raise RpcFailure("unavailable", f"{subject} timed out") from None
    if len(msg.data) > max_bytes:
        raise RpcFailure("internal", "reply too large")
    try:
        doc = json.loads(msg.data)
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


class RpcClient:
    """Base of the adapters that call another service's request/reply subjects."""

    def __init__(self, nc: Client, timeout_s: float = 2.0) -> None:
        self.nc = nc
        self.timeout_s = timeout_s

    async def call(self, subject: str, model: RpcModel, reply_type: type[T],
                   timeout: float | None = None, max_bytes: int = MAX_REPLY_BYTES) -> T:
        return await request(self.nc, subject, model, reply_type, timeout or self.timeout_s,
                             max_bytes)


@dataclass
class Reply:
    """An answer, and work to run once it is sent (a stream's chunks, say)."""
    model: RpcModel
    then: Callable[[], Awaitable[None]] | None = None


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


async def serve(nc: Client, routes: dict[str, Route], stop: asyncio.Event, *,
                max_bytes: int, queue: str = "", refuse: Refuse = _no_refusal) -> None:
    """Answer every subject in `routes` until `stop`, each request in its own task
    (`queue`: share the subjects with other instances). In-flight requests
    finish before this returns."""
    tasks: set[asyncio.Task[None]] = set()

    async def reply_to(msg: Msg) -> None:
        req_type, call = routes[msg.subject]
        out = await answer(msg.data, req_type, call, max_bytes, refuse)
        reply = out if isinstance(out, Reply) else Reply(out)
        try:
            await msg.respond(reply.model.model_dump_json().encode())
        except Exception as e:  # noqa: BLE001 - requester gone or bus down
            log.warning("could not answer %s: %r", msg.subject, e)
            return
        if reply.then is not None:
            await reply.then()

    async def on_msg(msg: Msg) -> None:
        t = asyncio.ensure_future(reply_to(msg))
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    subs = [await nc.subscribe(subject, queue=queue, cb=on_msg) for subject in routes]
    try:
        await stop.wait()
    finally:
        for sub in subs:
            await sub.unsubscribe()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

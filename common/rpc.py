"""Client side of core-NATS request/reply with contract payloads.

`request` sends a `RpcModel` and returns the parsed reply, or raises
`RpcFailure(code, detail)` for an `RpcError` reply, a timeout / no responder
("unavailable"), or a malformed or oversized reply ("internal"). Replies are
size-limited before parsing: a peer's response is never trusted.
"""
from __future__ import annotations

import json
import logging
from typing import Awaitable, Callable, TypeVar

from nats.aio.client import Client
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


async def answer(body: bytes, req_type: type[T], call: Callable[[T], Awaitable[RpcModel]],
                 max_bytes: int, refuse: Callable[[Exception], RpcError | None] = lambda e: None,
                 ) -> RpcModel:
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
    with log_context(op_id=getattr(req, "op_id", None)):
        try:
            return await call(req)
        except Exception as e:  # noqa: BLE001 - every request gets an answer
            known = refuse(e)
            if known is not None:
                return known
            log.exception("%s failed", req_type.__name__)
            return RpcError(error="internal", detail="internal error")

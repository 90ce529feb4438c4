"""ASGI middleware: op id minting, the request's server span (continuing an
incoming `traceparent`), access logs, and the limits of the edge: header
count and size (431), the body size by route (413), a body that stops
arriving (408), and JSON text no UTF-8 can carry (422)."""
from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from typing import Any

from opentelemetry.trace import SpanKind, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.logging import log_context, redact
from common.tracing import context_from, tracer

log = logging.getLogger("corral.gateway.http")
MAX_HEADERS = 100
MAX_HEADER_BYTES = 32 * 1024
BODY_IDLE_S = 30.0  # a request body that sends nothing for this long is cut (408)


def new_op_id() -> str:
    return "op_" + secrets.token_hex(10)


class _Refused(BaseException):  # not an Exception: the app's handlers let it through
    def __init__(self, status: int, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.detail, self.extra = status, detail, extra


TITLES = {408: "Request Timeout", 413: "Payload Too Large", 422: "Unprocessable Content",
          431: "Request Header Fields Too Large"}
SLUGS = {408: "request-timeout", 413: "payload-too-large", 422: "validation",
         431: "header-fields-too-large"}


class EdgeMiddleware:
    """Mints `op_id`, adds `X-Op-Id`, enforces the edge's limits and logs.
    `uploads`: (method, path regex) of routes with the larger `max_upload`;
    `big_uploads`: those with `max_big_upload` (image build contexts)."""

    def __init__(self, app: ASGIApp, max_body: int,
                 uploads: tuple[tuple[str, str], ...] = (), max_upload: int = 0,
                 body_idle_s: float = BODY_IDLE_S,
                 big_uploads: tuple[tuple[str, str], ...] = (), max_big_upload: int = 0):
        self.app = app
        self.body_idle_s = body_idle_s
        self.max_body = max_body
        self.uploads = [(m, re.compile(p), max_upload) for m, p in uploads] + \
            [(m, re.compile(p), max_big_upload) for m, p in big_uploads]

    def _limit(self, scope: Scope) -> int:
        for method, path, limit in self.uploads:
            if scope["method"] == method and path.fullmatch(scope["path"]):
                return limit
        return self.max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        op_id = new_op_id()
        scope.setdefault("state", {})["op_id"] = op_id
        started = time.perf_counter()
        status = {"code": 500, "sent": False}

        async def send_with_id(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                status["code"] = msg["status"]
                status["sent"] = True
                msg["headers"] = [h for h in msg.get("headers", []) if h[0].lower() != b"x-op-id"]
                msg["headers"].append((b"x-op-id", op_id.encode()))
            await send(msg)

        headers = dict(scope.get("headers") or [])
        parent = context_from(headers.get(b"traceparent", b"").decode("latin-1") or None)
        with log_context(op_id=op_id), tracer("corral.gateway").start_as_current_span(
                scope["method"], context=parent, kind=SpanKind.SERVER, attributes={
                    "http.request.method": scope["method"], "url.path": redact(scope["path"]),
                    "url.scheme": scope.get("scheme", "http"), "corral.op_id": op_id}) as span:
            try:
                _check_headers(scope)
                inner = await self._body(scope, receive)
                await self.app(scope, inner, send_with_id)
            except _Refused as e:
                if not status["sent"]:
                    await _send_problem(send_with_id, op_id, e)
            finally:
                span.set_attribute("http.response.status_code", status["code"])
                route = getattr(scope.get("route"), "path", None)  # set by routing
                if route:  # the name operators group by: "GET /v1/sandboxes/{sandbox_id}"
                    span.update_name(f"{scope['method']} {route}")
                    span.set_attribute("http.route", route)
                if status["code"] >= 500:
                    span.set_status(StatusCode.ERROR)
                log.info("%s %s -> %d", scope["method"], scope["path"], status["code"],
                         extra={"http_status": status["code"],
                                "duration_ms": round((time.perf_counter() - started) * 1000, 2)})

    async def _body(self, scope: Scope, receive: Receive) -> Receive:
        """A receive enforcing size and idleness; JSON bodies are read whole
        first and checked for text that UTF-8 cannot carry (lone surrogates)."""
        limit = self._limit(scope)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise _Refused(413, f"request body exceeds {limit} bytes")
        seen, done = 0, False

        async def limited() -> Message:
            nonlocal seen, done
            if done:  # the body is in: later receives wait for a disconnect, unbounded
                return await receive()
            try:
                msg = await asyncio.wait_for(receive(), self.body_idle_s)
            except TimeoutError:
                raise _Refused(408, f"the request body stalled for {self.body_idle_s:g}s") from None
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                done = not msg.get("more_body", False)
                if seen > limit:
                    raise _Refused(413, f"request body exceeds {limit} bytes")
            return msg

        if not headers.get(b"content-type", b"").startswith(b"application/json"):
            return limited
        chunks, disconnected = [], None
        while True:
            msg = await limited()
            if msg["type"] != "http.request":
                disconnected = msg
                break
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body", False):
                break
        body = b"".join(chunks)
        _check_text(body)
        replay: list[Message] = [disconnected or {"type": "http.request", "body": body,
                                                  "more_body": False}]

        async def replayed() -> Message:
            return replay.pop() if replay else await receive()
        return replayed


def _check_headers(scope: Scope) -> None:
    headers = scope.get("headers") or []
    size = sum(len(k) + len(v) + 4 for k, v in headers)
    if len(headers) > MAX_HEADERS or size > MAX_HEADER_BYTES:
        raise _Refused(431, f"at most {MAX_HEADERS} headers and {MAX_HEADER_BYTES} bytes of them")


def _check_text(body: bytes) -> None:
    """422 for a JSON body holding a string that is not valid Unicode (a lone
    surrogate, "\\ud800"): nothing downstream could encode it."""
    try:
        doc = json.loads(body) if body.strip() else None
    except (ValueError, RecursionError):
        return  # not JSON at all: the route's own validation answers
    where = _unencodable(doc, ("body",))
    if where is not None:
        raise _Refused(422, "request validation failed", errors=[
            {"loc": list(where), "msg": "not valid Unicode (a lone surrogate)",
             "type": "string_unicode"}])


def _unencodable(doc: Any, at: tuple[str, ...]) -> tuple[str, ...] | None:
    stack = [(doc, at)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return path
        elif isinstance(item, dict):
            for k, v in item.items():
                stack.append((k, (*path, "<key>")))
                stack.append((v, (*path, str(k)[:64])))
        elif isinstance(item, list):
            stack.extend((v, (*path, str(i))) for i, v in enumerate(item))
    return None


async def _send_problem(send: Send, op_id: str, e: _Refused) -> None:
    body = json.dumps({"type": f"https://corral.dev/problems/{SLUGS[e.status]}",
                       "title": TITLES[e.status], "status": e.status, "detail": e.detail,
                       "op_id": op_id, **e.extra}, ensure_ascii=True).encode()
    await send({"type": "http.response.start", "status": e.status,
                "headers": [(b"content-type", b"application/problem+json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})

"""ASGI middleware: op id minting, access logs and the request body limit."""
from __future__ import annotations

import json
import logging
import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.logging import log_context

log = logging.getLogger("corral.gateway.http")


def new_op_id() -> str:
    return "op_" + secrets.token_hex(10)


class _TooLarge(Exception):
    pass


class EdgeMiddleware:
    """Mints `op_id`, adds `X-Op-Id`, enforces the body limit (413) and logs."""

    def __init__(self, app: ASGIApp, max_body: int, upload_paths: tuple[str, ...] = (),
                 max_upload: int = 0):
        self.app = app
        self.max_body = max_body
        self.upload_paths = upload_paths
        self.max_upload = max_upload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        op_id = new_op_id()
        scope.setdefault("state", {})["op_id"] = op_id
        limit = self.max_body
        if self.max_upload and any(p in scope["path"] for p in self.upload_paths):
            limit = self.max_upload
        started = time.perf_counter()
        status = {"code": 500, "sent": False}
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise _TooLarge()
            return msg

        async def send_with_id(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                status["code"] = msg["status"]
                status["sent"] = True
                msg["headers"] = [h for h in msg.get("headers", []) if h[0].lower() != b"x-op-id"]
                msg["headers"].append((b"x-op-id", op_id.encode()))
            await send(msg)

        with log_context(op_id=op_id):
            try:
                if declared is not None and (not declared.isdigit() or int(declared) > limit):
                    raise _TooLarge()
                await self.app(scope, limited_receive, send_with_id)
            except _TooLarge:
                if not status["sent"]:
                    await _send_413(send_with_id, op_id, limit)
            finally:
                log.info("%s %s -> %d", scope["method"], scope["path"], status["code"],
                         extra={"http_status": status["code"],
                                "duration_ms": round((time.perf_counter() - started) * 1000, 2)})


async def _send_413(send: Send, op_id: str, limit: int) -> None:
    body = json.dumps({"type": "https://corral.dev/problems/payload-too-large",
                       "title": "Payload Too Large", "status": 413,
                       "detail": f"request body exceeds {limit} bytes", "op_id": op_id}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/problem+json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})

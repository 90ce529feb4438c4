"""The Connect protocol (connectrpc.com) with its JSON codec, as E2B's SDK
speaks it to envd: unary calls (`application/json`, errors as an HTTP status
with `{"code", "message"}`) and server streams (`application/connect+json`:
5-byte envelopes, ended by one flagged end-stream message)."""
from __future__ import annotations

import json
import struct
from typing import Any

from fastapi.responses import JSONResponse

ENVELOPE = struct.Struct(">BI")  # flags, length
COMPRESSED, END_STREAM = 0x01, 0x02
MAX_MESSAGE = 1 << 20
STREAM_TYPE = "application/connect+json"
# Connect error codes as HTTP statuses (unary calls)
STATUS = {"invalid_argument": 400, "failed_precondition": 400, "out_of_range": 400,
          "unauthenticated": 401, "permission_denied": 403, "not_found": 404,
          "already_exists": 409, "aborted": 409, "resource_exhausted": 429,
          "canceled": 499, "unimplemented": 501, "unavailable": 503,
          "deadline_exceeded": 504, "internal": 500, "unknown": 500, "data_loss": 500}


class ConnectError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code if code in STATUS else "unknown"
        self.message = message[:1000]

    def body(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw or b"{}")
    except (ValueError, RecursionError):
        raise ConnectError("invalid_argument", "the message is not JSON") from None
    if not isinstance(doc, dict):
        raise ConnectError("invalid_argument", "the message is not a JSON object")
    return doc


def unary_request(body: bytes) -> dict[str, Any]:
    if len(body) > MAX_MESSAGE:
        raise ConnectError("resource_exhausted", "message too large")
    return _json_object(body)


def stream_request(body: bytes) -> dict[str, Any]:
    """The one message a server-streaming call carries."""
    if len(body) < ENVELOPE.size:
        raise ConnectError("invalid_argument", "no request message")
    flags, size = ENVELOPE.unpack_from(body)
    if flags & COMPRESSED:
        raise ConnectError("unimplemented", "compressed messages are not accepted")
    if size > MAX_MESSAGE or ENVELOPE.size + size != len(body):
        raise ConnectError("invalid_argument", "bad message envelope")
    return _json_object(body[ENVELOPE.size:])


def envelope(message: dict[str, Any], flags: int = 0) -> bytes:
    raw = json.dumps(message, separators=(",", ":")).encode()
    return ENVELOPE.pack(flags, len(raw)) + raw


def end_stream(error: ConnectError | None = None) -> bytes:
    return envelope({"error": error.body()} if error else {}, END_STREAM)


def unary_error(error: ConnectError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=STATUS[error.code])


def timeout_s(header: str | None, default: float, cap: float) -> float:
    """`Connect-Timeout-Ms`, bounded."""
    try:
        ms = int(header) if header else 0
    except ValueError:
        raise ConnectError("invalid_argument", "bad Connect-Timeout-Ms") from None
    return min(ms / 1000, cap) if ms > 0 else default

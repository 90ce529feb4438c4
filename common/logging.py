"""JSON-lines logging with op_id / sandbox_id / host_id from context, and the
current span's trace_id / span_id."""
from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .tracing import current_ids

op_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("op_id", default=None)
sandbox_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "sandbox_id", default=None)
host_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("host_id", default=None)
_SERVICE = "corral"
_USERINFO = re.compile(r"(\w+://)[^/@\s]+@")
_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


_PORT_TOKEN = re.compile(r"(/ports/[^/\s]+/\d+/)[^/\s\"]+")


def redact(text: str) -> str:
    """Strip credentials from URLs (user:pass@host, a port URL's token)."""
    return _PORT_TOKEN.sub(r"\1***", _USERINFO.sub(r"\1***@", text))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": _SERVICE,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key, var in (("op_id", op_id_var), ("sandbox_id", sandbox_id_var),
                         ("host_id", host_id_var)):
            value = getattr(record, key, None) or var.get()
            if value:
                doc[key] = value
        ids = current_ids()
        if ids is not None:
            doc["trace_id"], doc["span_id"] = ids
        for k, v in record.__dict__.items():
            if k not in _RESERVED and k not in doc and not k.startswith("_"):
                doc[k] = v if isinstance(v, (int, float, bool, type(None))) else redact(str(v))
        if record.exc_info:
            doc["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(doc, separators=(",", ":"))


def configure_logging(service: str, level: str = "INFO") -> None:
    global _SERVICE
    _SERVICE = service
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access", "nats", "faststream"):
        logging.getLogger(noisy).setLevel("WARNING")
    logging.getLogger("uvicorn.error").handlers[:] = []
    logging.getLogger("uvicorn").handlers[:] = []


@contextmanager
def log_context(op_id: str | None = None, sandbox_id: str | None = None,
                host_id: str | None = None) -> Iterator[None]:
    tokens = []
    for var, value in ((op_id_var, op_id), (sandbox_id_var, sandbox_id), (host_id_var, host_id)):
        if value is not None:
            tokens.append((var, var.set(value)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)

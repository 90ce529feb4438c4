"""Typed exceptions built from the gateway's problem+json bodies."""
from __future__ import annotations

from typing import Any


class CorralError(Exception):
    """Base of every SDK error. `status` is None for client-side failures."""

    def __init__(self, detail: str, *, status: int | None = None, title: str | None = None,
                 op_id: str | None = None, type: str | None = None,
                 errors: list[dict] | None = None, body: dict | None = None):
        self.detail, self.status, self.title, self.op_id = detail, status, title, op_id
        self.type, self.errors, self.body = type, errors or [], body or {}
        super().__init__(str(self))

    def __str__(self) -> str:
        head = f"{self.status} {self.title}: " if self.status else ""
        tail = f" (op_id {self.op_id})" if self.op_id else ""
        fields = "; ".join(f"{'.'.join(e.get('loc', []))}: {e.get('msg', '')}" for e in self.errors)
        return f"{head}{self.detail}{' [' + fields + ']' if fields else ''}{tail}"


class ArgumentError(CorralError, TypeError, ValueError):
    """A wrong argument to an SDK call, caught before anything was sent;
    `param` names it. Also a TypeError and a ValueError, as Python's own are."""

    def __init__(self, detail: str, *, param: str | None = None) -> None:
        self.param = param
        super().__init__(detail)


class ConfigError(CorralError):
    """No API URL/key could be found."""


class CorralConnectionError(CorralError):
    """The gateway could not be reached (after retries)."""


class StreamError(CorralError):
    """A streaming response ended without its final event."""


class AuthError(CorralError):
    """401 (missing/invalid key) or 403 (wrong kind of key)."""


class NotFoundError(CorralError):
    pass


class ConflictError(CorralError):
    """409, e.g. the sandbox is not running or the name is taken."""


class ValidationError(CorralError):
    """422; `errors` lists the offending fields."""


class RateLimitError(CorralError):
    def __init__(self, *a: Any, retry_after: float | None = None, **kw: Any):
        self.retry_after = retry_after
        super().__init__(*a, **kw)


class ServerError(CorralError):
    """5xx."""


class SandboxFailedError(ServerError):
    """A create that did not reach `running`; `failure` is {"code", "message"} or None."""

    @property
    def failure(self) -> dict | None:
        return self.body.get("failure")

    @property
    def sandbox_id(self) -> str | None:
        return self.body.get("sandbox_id")


class SandboxTimeoutError(ServerError, TimeoutError):
    """A create (or a wait) that did not reach the wanted state in time."""

    @property
    def sandbox_id(self) -> str | None:
        return self.body.get("sandbox_id")


_BY_STATUS = {401: AuthError, 403: AuthError, 404: NotFoundError, 409: ConflictError,
              422: ValidationError, 429: RateLimitError}


def error_from_problem(status: int, body: Any, headers: Any = None,
                       fallback_text: str = "") -> CorralError:
    """Map an HTTP error (problem+json or anything else) to a typed exception."""
    doc = body if isinstance(body, dict) else {}
    title = str(doc.get("title") or f"HTTP {status}")
    kw: dict[str, Any] = dict(status=status, title=title,
                              op_id=doc.get("op_id") or (headers or {}).get("x-op-id"),
                              type=doc.get("type"), errors=doc.get("errors"), body=doc)
    detail = str(doc.get("detail") or fallback_text[:500] or title)
    ptype = str(doc.get("type") or "")
    if ptype.endswith("/sandbox-failed"):
        return SandboxFailedError(detail, **kw)
    if ptype.endswith("/wait-timeout"):
        return SandboxTimeoutError(detail, **kw)
    if status == 429:
        return RateLimitError(detail, retry_after=_retry_after(headers), **kw)
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else CorralError)
    return cls(detail, **kw)


def _retry_after(headers: Any) -> float | None:
    raw = (headers or {}).get("retry-after")
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None

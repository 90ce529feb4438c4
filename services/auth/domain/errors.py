"""Domain errors; each carries a stable RPC error code."""
from __future__ import annotations


class AuthError(Exception):
    code = "internal"

    def __init__(self, detail: str = ""):
        super().__init__(detail)
        self.detail = detail


class Invalid(AuthError):
    code = "invalid"


class NotFound(AuthError):
    code = "not_found"


class Conflict(AuthError):
    code = "conflict"


class Unauthorized(AuthError):
    code = "unauthorized"

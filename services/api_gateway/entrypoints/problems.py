"""RFC 9457 problem+json responses; never leak internals."""
from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

PROBLEM = "application/problem+json"
TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
          405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large",
          415: "Unsupported Media Type", 422: "Unprocessable Content",
          429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
          503: "Service Unavailable", 504: "Gateway Timeout"}


def problem(status: int, detail: str, op_id: str, code: str | None = None,
            headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body = {"type": f"https://corral.dev/problems/{code or TITLES.get(status, 'error').lower().replace(' ', '-')}",
            "title": TITLES.get(status, "Error"), "status": status, "detail": detail,
            "op_id": op_id, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM,
                        headers={"X-Op-Id": op_id, **(headers or {})})

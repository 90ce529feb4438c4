"""RFC 9457 problem+json responses; never leak internals."""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

PROBLEM = "application/problem+json"
TITLES = {400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
          404: "Not Found",
          405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large",
          415: "Unsupported Media Type", 422: "Unprocessable Content",
          429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
          503: "Service Unavailable", 504: "Gateway Timeout"}
# A peer's stable error code (RpcFailure.code, a stream's error) as an HTTP status.
RPC_STATUS = {"not_found": 404, "invalid": 422, "conflict": 409, "unauthorized": 401,
              "too_large": 413, "unreachable": 502}


def problem(status: int, detail: str, op_id: str, code: str | None = None,
            headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    slug = code or TITLES.get(status, "error").lower().replace(" ", "-")
    body = {"type": f"https://corral.dev/problems/{slug}",
            "title": TITLES.get(status, "Error"), "status": status, "detail": detail,
            "op_id": op_id, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM,
                        headers={"X-Op-Id": op_id, **(headers or {})})


PROBLEM_SCHEMA = {
    "type": "object", "required": ["type", "title", "status", "detail", "op_id"],
    "properties": {
        "type": {"type": "string"}, "title": {"type": "string"},
        "status": {"type": "integer"}, "detail": {"type": "string"},
        "op_id": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object", "properties": {
            "loc": {"type": "array", "items": {"type": "string"}},
            "msg": {"type": "string"}, "type": {"type": "string"}}}},
    },
    "additionalProperties": True,
}
# Every operation may answer these; authenticated ones also 401/403/429.
COMMON = (400, 413, 422, 500, 503)
AUTHED = (401, 403, 404, 409, 429, 502)


def problem_openapi(app: FastAPI) -> dict:
    """The generated document, with the problem+json errors we really serve."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, description=app.description,
                      routes=app.routes)
    comps = doc.setdefault("components", {}).setdefault("schemas", {})
    comps["Problem"] = PROBLEM_SCHEMA
    ref = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path, ops in doc["paths"].items():
        for op in ops.values():
            codes = COMMON + (AUTHED if path.startswith("/v1/") else ())
            for code in codes:
                resp = op["responses"].setdefault(str(code), {})
                resp["description"] = resp.get("description") or TITLES.get(code, "Error")
                resp["content"] = ref
    comps.pop("HTTPValidationError", None)
    comps.pop("ValidationError", None)
    app.openapi_schema = doc
    return doc

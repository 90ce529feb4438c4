"""The gateway's OpenAPI document turned into minimal valid requests, so the
tenancy tests cover every route the moment it is served."""
from __future__ import annotations

import httpx

METHODS = ("get", "put", "post", "delete", "patch")


class Spec:
    def __init__(self, doc: dict):
        self.doc = doc

    def ops(self):
        """(method, path, operation) for every operation, in document order."""
        for path, item in self.doc["paths"].items():
            for method in METHODS:
                if method in item:
                    yield method.upper(), path, item[method]

    def resolve(self, schema: dict) -> dict:
        while "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            schema = self.doc["components"]["schemas"][name]
        return schema

    def minimal(self, schema: dict):
        """The smallest value valid for `schema` (enough for this API's shapes)."""
        s = self.resolve(schema)
        for key in ("anyOf", "oneOf"):
            if key in s:
                options = [o for o in s[key] if self.resolve(o).get("type") != "null"]
                return self.minimal(options[0]) if options else None
        if "allOf" in s:
            return self.minimal(s["allOf"][0])
        if "enum" in s:
            return s["enum"][0]
        if "const" in s:
            return s["const"]
        t = s.get("type")
        if t == "object":
            return {k: self.minimal(v) for k, v in s.get("properties", {}).items()
                    if k in s.get("required", ())}
        if t == "array":
            return [self.minimal(s.get("items", {})) for _ in range(max(1, s.get("minItems", 0)))]
        if t == "integer":
            if "minimum" in s:
                return int(s["minimum"])
            return int(s["exclusiveMinimum"]) + 1 if "exclusiveMinimum" in s else 1
        if t == "number":
            if "minimum" in s:
                return s["minimum"]
            return s["exclusiveMinimum"] + 1 if "exclusiveMinimum" in s else 1
        if t == "boolean":
            return False
        if t == "string":
            if s.get("format") == "date-time":
                return "2026-01-01T00:00:00+00:00"
            if s.get("pattern", "").startswith("^/"):
                return "/tmp"
            return "x" * max(1, s.get("minLength", 0))
        return None

    def request(self, method: str, path: str, op: dict, path_values: dict[str, str],
                auth: str | None, accept: str | None = None) -> dict:
        """httpx.request(**kwargs) for `op` with its required parameters and body."""
        url, params, headers = path, {}, {}
        for p in op.get("parameters", []):
            if p["in"] == "path":
                url = url.replace("{" + p["name"] + "}", path_values[p["name"]])
            elif p["in"] == "query" and (p.get("required") or p["name"] == "path"
                                         or ("/files" in path and p["name"] == "to")):
                # (`path` or `path_b64`, and `to` or `to_b64`, are required on the
                # file routes: one of two)
                params[p["name"]] = self.minimal(p["schema"])
            elif p["in"] == "header" and p.get("required") and p["name"].lower() != "authorization":
                headers[p["name"]] = str(self.minimal(p["schema"]))
        if auth is not None:
            headers["Authorization"] = auth
        if accept:
            headers["Accept"] = accept
        kw: dict = {"method": method, "url": url, "params": params, "headers": headers}
        content = op.get("requestBody", {}).get("content", {})
        if "application/json" in content:
            kw["json"] = self.minimal(content["application/json"]["schema"]) or {}
        elif "multipart/form-data" in content:  # one file, its filename a path
            kw["files"] = {"file": ("/tmp/x", b"x")}
        elif content:
            kw["content"] = b"x"
            headers["Content-Type"] = next(iter(content))
        return kw


def streams(op: dict) -> bool:
    return any("text/event-stream" in (r.get("content") or {}) for r in op["responses"].values())


def is_admin(op: dict) -> bool:
    return "admin" in (op.get("tags") or [])


def scopes(op: dict) -> set[str]:
    """Which keys a route serves: an org key, an admin key, or (declared) both."""
    return set(op.get("x-key-scopes") or (["admin"] if is_admin(op) else ["org"]))


def sample(client: httpx.Client, kw: dict, idle_s: float = 2.0) -> httpx.Response:
    """An event stream's response, its body being what arrived before it went
    quiet for `idle_s` (it never ends by itself)."""
    chunks: list[bytes] = []
    with client.stream(**kw, timeout=httpx.Timeout(10, read=idle_s)) as r:
        try:
            for chunk in r.iter_bytes():
                chunks.append(chunk)
        except httpx.ReadTimeout:
            pass
    return httpx.Response(r.status_code, headers=r.headers, content=b"".join(chunks))


def needs_auth(op: dict) -> bool:
    return any(p["name"].lower() == "authorization" for p in op.get("parameters", []))

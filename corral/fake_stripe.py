"""A local stand-in for the Stripe endpoints Corral uses (customers, billing
meters, meter events), for tests and for `make up` without a Stripe account:

    python -m corral.fake_stripe --port 12111
    CORRAL_STRIPE_API_KEY=sk_test_local CORRAL_STRIPE_API_BASE=http://127.0.0.1:12111 make up

It speaks Stripe's wire format (form-encoded requests, JSON objects and error
bodies) closely enough for the real `stripe` SDK, keeps every accepted meter
event (deduplicated by `identifier`, as Stripe is), and can inject failures:
`POST /_fake/faults` with JSON {"fail_first": 500 (the first attempt of each
meter event identifier), "rate_limit_next": 5 (429 to the next meter events),
"delay_s": 0.5} and `GET /_fake/state` for what it holds.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

MAX_BODY = 1 << 20
PAST_LIMIT_S = 35 * 86400  # Stripe refuses meter events older than 35 days


def form(body: str) -> dict[str, Any]:
    """`a[b]=1&c=2` -> {"a": {"b": "1"}, "c": "2"} (one level of brackets is all we use)."""
    out: dict[str, Any] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        if "[" in key and key.endswith("]"):
            outer, inner = key[:-1].split("[", 1)
            out.setdefault(outer, {})[inner.rstrip("]").split("][")[-1]] = value
        else:
            out[key] = value
    return out


class FakeStripe:
    """State and behaviour; `serve()` puts it on a port (restartable on the same one)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self.lock = threading.RLock()
        self.customers: dict[str, dict] = {}
        self.meters: dict[str, dict] = {}
        self.events: dict[str, dict] = {}  # by identifier: what was billed, once
        self.attempts: list[tuple[str, str, int]] = []  # (path, identifier or "", status)
        self.idempotent: dict[str, dict] = {}
        self.faults: dict[str, Any] = {"fail_first": 0, "rate_limit_next": 0, "delay_s": 0.0}
        self._first_seen: set[str] = set()
        self._httpd: ThreadingHTTPServer | None = None
        self.conns: set[socket.socket] = set()  # open keep-alive connections

    # -- lifecycle ----------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def serve(self) -> FakeStripe:
        fake = self

        class Handler(_Handler):
            state = fake
        self._httpd = _Server((self.host, self.port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Down: open connections cut, new ones refused until `serve()` again (same port)."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        for conn in list(self.conns):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    # -- queries for tests -----------------------------------------------------------
    def totals(self) -> dict[str, float]:
        with self.lock:
            out: dict[str, float] = {}
            for e in self.events.values():
                out[e["event_name"]] = out.get(e["event_name"], 0.0) + float(e["payload"]["value"])
            return out

    def accepted_posts(self, identifier: str) -> int:
        with self.lock:
            return sum(1 for _, i, s in self.attempts if i == identifier and s == 200)

    # -- endpoints ----------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict, params: dict[str, Any],
               idem: str | None) -> tuple[int, dict]:
        if path == "/_fake/faults" and method == "POST":
            self.faults.update(params)
            return 200, self.faults
        if path == "/_fake/state":
            return 200, {"customers": list(self.customers), "meters": list(self.meters.values()),
                         "events": list(self.events.values()), "totals": self.totals()}
        if not path.startswith("/v1/"):
            return 404, _error("invalid_request_error", "resource_missing", "unknown path")
        if self.faults["rate_limit_next"] > 0 and path == "/v1/billing/meter_events":
            self.faults["rate_limit_next"] -= 1
            return 429, _error("rate_limit_error", "rate_limit", "too many requests")
        if method == "POST" and idem and idem in self.idempotent:
            return 200, self.idempotent[idem]
        status, body = self._route(method, path, query, params)
        if method == "POST" and idem and status == 200:
            self.idempotent[idem] = body
        return status, body

    def _route(self, method: str, path: str, query: dict,
               params: dict[str, Any]) -> tuple[int, dict]:
        if path == "/v1/customers" and method == "POST":
            cid = "cus_" + secrets.token_hex(7)
            self.customers[cid] = {"id": cid, "object": "customer",
                                   "metadata": params.get("metadata", {}),
                                   "name": params.get("name")}
            return 200, self.customers[cid]
        if path.startswith("/v1/customers/") and method == "GET":
            c = self.customers.get(path.rsplit("/", 1)[1])
            return (200, c) if c else (404, _error("invalid_request_error", "resource_missing",
                                                   "No such customer"))
        if path == "/v1/billing/meters" and method == "GET":
            data = [m for m in self.meters.values()
                    if query.get("status") in (None, m["status"])]
            return 200, {"object": "list", "data": data, "has_more": False,
                         "url": "/v1/billing/meters"}
        if path == "/v1/billing/meters" and method == "POST":
            return self._new_meter(params)
        if path == "/v1/billing/meter_events" and method == "POST":
            return self._meter_event(params)
        return 404, _error("invalid_request_error", "resource_missing", f"no {method} {path}")

    def _new_meter(self, p: dict[str, Any]) -> tuple[int, dict]:
        name = p.get("event_name", "")
        if any(m["event_name"] == name and m["status"] == "active" for m in self.meters.values()):
            return 400, _error("invalid_request_error", "resource_already_exists",
                               f"An active meter with event_name {name} already exists.")
        mid = "mtr_" + secrets.token_hex(7)
        self.meters[mid] = {"id": mid, "object": "billing.meter", "event_name": name,
                            "display_name": p.get("display_name"), "status": "active",
                            "default_aggregation": p.get("default_aggregation", {}),
                            "customer_mapping": p.get("customer_mapping", {}),
                            "value_settings": p.get("value_settings", {})}
        return 200, self.meters[mid]

    def _meter_event(self, p: dict[str, Any]) -> tuple[int, dict]:
        ident = p.get("identifier") or secrets.token_hex(8)
        payload = p.get("payload") or {}
        if ident not in self._first_seen:
            self._first_seen.add(ident)
            if self.faults["fail_first"]:
                return int(self.faults["fail_first"]), _error("api_error", None, "injected")
        if ident in self.events:
            return 400, _error("invalid_request_error", "resource_already_exists",
                               f"An event already exists with identifier {ident}.")
        if not any(m["event_name"] == p.get("event_name") for m in self.meters.values()):
            return 400, _error("invalid_request_error", "resource_missing",
                               f"No active meter with event_name {p.get('event_name')}")
        if payload.get("stripe_customer_id") not in self.customers:
            return 400, _error("invalid_request_error", "resource_missing",
                               f"No such customer: {payload.get('stripe_customer_id')}")
        ts = int(p.get("timestamp") or time.time())
        if ts < time.time() - PAST_LIMIT_S:
            return 400, _error("invalid_request_error", "timestamp_too_far_in_past",
                               "Timestamp must be within the past 35 days.")
        try:
            float(payload["value"])
        except (KeyError, ValueError):
            return 400, _error("invalid_request_error", "parameter_invalid", "bad value")
        self.events[ident] = {"object": "billing.meter_event", "identifier": ident,
                              "event_name": p["event_name"], "payload": payload,
                              "timestamp": ts, "created": int(time.time()), "livemode": False}
        return 200, self.events[ident]


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client gone: expected
            super().handle_error(request, client_address)  # type: ignore[arg-type]


def _error(kind: str, code: str | None, message: str) -> dict:
    return {"error": {"type": kind, "code": code, "message": message}}


class _Handler(BaseHTTPRequestHandler):
    state: FakeStripe
    protocol_version = "HTTP/1.1"

    def log_message(self, *_a: object) -> None:
        return

    def setup(self) -> None:
        super().setup()
        self.state.conns.add(self.connection)

    def finish(self) -> None:
        self.state.conns.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def _answer(self, method: str) -> None:
        split = urlsplit(self.path)
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:
            self.send_error(413)
            return
        try:
            got = self.rfile.read(n) if n else b""
        except OSError:
            return  # the client died mid-request: nothing reached us
        if len(got) < n:
            return  # cut short: as a real server, act on no partial request
        raw = got.decode()
        if split.path.startswith("/_fake/"):
            params = json.loads(raw or "{}")
        else:
            params = form(raw)
        delay = float(self.state.faults.get("delay_s") or 0)
        if delay and split.path.startswith("/v1/"):
            time.sleep(delay)
        with self.state.lock:
            status, body = self.state.handle(method, split.path, dict(parse_qsl(split.query)),
                                             params, self.headers.get("Idempotency-Key"))
            ident = params.get("identifier", "") if isinstance(params, dict) else ""
            self.state.attempts.append((split.path, str(ident), status))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Request-Id", "req_" + secrets.token_hex(6))
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client died mid-call (as the crash test intends)

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=12111)
    a = ap.parse_args(argv)
    fake = FakeStripe(a.host, a.port).serve()
    print(f"fake Stripe on {fake.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

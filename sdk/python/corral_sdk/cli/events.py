"""`corral events tail`: follow your org's sandbox events (`GET /v1/events`).

It speaks REST with an API key like every other command; an admin key
(`--admin`, CORRAL_ADMIN_KEY) follows every org. A dropped connection is
resumed from the last event's id, so nothing is missed or shown twice.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import TextIO

import httpx

from ..config import Config, setting
from ..errors import ConfigError, CorralError
from ..sse import SSEDecoder

_DUR = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
RETRIES = 5


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """`90s`, `10m`, `2h`, `1d` ago, or an ISO 8601 time (UTC if no zone)."""
    m = _DUR.match(value.strip())
    if m:
        return (now or datetime.now(timezone.utc)) - timedelta(seconds=float(m[1]) * _UNIT[m[2]])
    try:
        t = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration (10m) or ISO time: {value!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def line(body: dict) -> str:
    where = (f"sandbox={body['sandbox_id']}" if body.get("sandbox_id")
             else f"host={body.get('host_id', '-')}")
    return (f"{body.get('occurred_at', '-')}  {body.get('type', '?'):<24} {where}  "
            f"op_id={body.get('op_id', '-')}")


def query(a: argparse.Namespace) -> dict[str, str | list[str]]:
    q: dict[str, str | list[str]] = {}
    if a.sandbox:
        q["sandbox_id"] = a.sandbox
    if a.type:
        q["type"] = list(a.type)
    if a.org:
        q["org_id"] = a.org
    if a.since and not a.cursor:
        q["since"] = a.since.isoformat()
    if a.cursor:
        q["cursor"] = a.cursor
    return q


def _problem(resp: httpx.Response) -> str:
    try:
        doc = resp.json()
        what = doc.get("detail") or doc.get("title")
        return f"{resp.status_code} {what} (op_id {doc.get('op_id')})"
    except ValueError:
        return f"HTTP {resp.status_code}"


def tail(cfg: Config, q: dict[str, str | list[str]], as_json: bool,
         out: TextIO = sys.stdout) -> int:
    last: str | None = q.pop("cursor", None)  # type: ignore[assignment]
    failures = 0
    headers = {"Authorization": f"Bearer {cfg.api_key}", "Accept": "text/event-stream"}
    with httpx.Client(base_url=cfg.api_url, timeout=httpx.Timeout(10, read=60)) as http:
        while True:
            params = {**q, **({"cursor": last} if last else {})}
            try:
                with http.stream("GET", "/v1/events", params=params, headers=headers) as resp:
                    if resp.status_code != 200:
                        resp.read()
                        raise CorralError(f"cannot follow events: {_problem(resp)}")
                    failures = 0
                    decoder = SSEDecoder()
                    for chunk in resp.iter_bytes():
                        for ev in decoder.feed(chunk):
                            if ev.event == "error":
                                raise httpx.ReadError(ev.data)
                            body = json.loads(ev.data)
                            last = ev.id or last
                            out.write((json.dumps(body) if as_json else line(body)) + "\n")
                            out.flush()
            except (httpx.TransportError, httpx.RemoteProtocolError) as e:
                failures += 1
                if failures > RETRIES:
                    raise CorralError(f"lost the event stream: {e}") from None
                time.sleep(min(0.5 * 2 ** failures, 10))  # then resume after `last`


def cmd_tail(a: argparse.Namespace) -> int:
    key = setting("CORRAL_ADMIN_KEY") if a.admin else None
    if a.admin and not key:
        raise ConfigError("--admin needs CORRAL_ADMIN_KEY (export it, or run `corral up`)")
    return tail(Config.resolve(api_key=key), query(a), a.json)


def register(sub: argparse._SubParsersAction, parsers: dict) -> None:
    ev = parsers["events"] = sub.add_parser("events", help="your org's sandbox events")
    s = ev.add_subparsers(dest="events_cmd", required=True)
    t = s.add_parser("tail", help="follow events live (Ctrl-C stops)")
    t.add_argument("--sandbox", help="one sandbox's events")
    t.add_argument("--type", action="append", help="event type, repeatable")
    t.add_argument("--since", type=parse_since, metavar="DURATION_OR_ISO",
                   help="replay from then (10m, 2h, 2024-05-01T12:00Z); default: new only")
    t.add_argument("--cursor", help="resume after this event id")
    t.add_argument("--admin", action="store_true",
                   help="use CORRAL_ADMIN_KEY: every org's events (ops)")
    t.add_argument("--org", help="with --admin: one org")
    t.add_argument("--json", action="store_true", help="one JSON event per line")
    t.set_defaults(fn=cmd_tail)

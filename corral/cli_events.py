"""`corral events tail`: follow platform events live from JetStream."""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, TextIO

from .sdk.config import setting
from .sdk.errors import ConfigError

_DUR = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

NOISY = {"HostHeartbeat"}  # shown only when asked for by --type


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """`90s`, `10m`, `2h`, `1d` ago, or an ISO 8601 time (UTC if no zone)."""
    m = _DUR.match(value.strip())
    if m:
        return (now or datetime.now(UTC)) - timedelta(seconds=float(m[1]) * _UNIT[m[2]])
    try:
        t = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration (10m) or ISO time: {value!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def subscriptions(org: str | None, sandbox: str | None,
                  types: list[str] | None) -> list[tuple[str, str]]:
    """(stream, filter subject) pairs covering what the filters ask for."""
    t = types[0] if types and len(types) == 1 else "*"
    o, s = org or "*", sandbox or "*"
    subs = [("CORRAL_SANDBOX", f"corral.evt.sandbox.{o}.{s}.{t}")]
    if t in ("*", "UsageRecorded"):
        subs.append(("CORRAL_USAGE", f"corral.evt.usage.{o}.{s}.UsageRecorded"))
    if not org and not sandbox:
        subs.append(("CORRAL_HOST", f"corral.evt.host.*.{t}"))
    return subs


def wanted(body: dict, types: list[str] | None) -> bool:
    kind = body.get("type", "")
    return kind in types if types else kind not in NOISY


def line(body: dict) -> str:
    where = (f"sandbox={body['sandbox_id']}" if body.get("sandbox_id")
             else f"host={body.get('host_id', '-')}")
    return (f"{body.get('occurred_at', '-')}  {body.get('type', '?'):<24} {where}  "
            f"op_id={body.get('op_id', '-')}")


async def _subscribe(nc: Client, a: argparse.Namespace, queue: asyncio.Queue[Msg]) -> None:
    from nats.js.api import ConsumerConfig, DeliverPolicy
    from nats.js.errors import NotFoundError

    js = nc.jetstream()
    for stream, subject in subscriptions(a.org, a.sandbox, a.type):
        cfg = ConsumerConfig(opt_start_time=a.since) if a.since else None
        policy = DeliverPolicy.BY_START_TIME if a.since else DeliverPolicy.NEW
        try:
            await js.subscribe(subject, stream=stream, ordered_consumer=True, config=cfg,
                               deliver_policy=policy, cb=queue.put)
        except NotFoundError:
            continue  # that stream does not exist (yet) on this server


async def tail(url: str, a: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    import nats

    stop = asyncio.Event()
    code = {"rc": 0}
    loop = asyncio.get_running_loop()
    def stop_with(rc: int) -> None:
        code.update(rc=rc)
        stop.set()
    for sig, rc in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        loop.add_signal_handler(sig, stop_with, rc)
    errors: list[str] = []

    async def on_error(e: Exception) -> None:  # quiet: one line at the end, no tracebacks
        errors.append(str(e) or type(e).__name__)

    async def on_closed() -> None:
        if not stop.is_set():
            code.update(rc=1)
            stop.set()
    try:
        nc = await nats.connect(url, connect_timeout=3, reconnect_time_wait=1,
                                max_reconnect_attempts=10, error_cb=on_error, closed_cb=on_closed)
    except Exception as e:  # noqa: BLE001 - NoServersError, OSError, ...
        raise ConfigError(f"cannot reach NATS at {url}: {errors[-1] if errors else e}") from None
    queue: asyncio.Queue[Msg] = asyncio.Queue()
    try:
        await _subscribe(nc, a, queue)
        getter = None
        while not stop.is_set():
            getter = asyncio.ensure_future(queue.get())
            waiter = asyncio.ensure_future(stop.wait())
            await asyncio.wait({getter, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if not getter.done():
                getter.cancel()
                break
            msg = getter.result()
            try:
                body = json.loads(msg.data)
            except ValueError:
                continue
            if wanted(body, a.type):
                out.write((json.dumps(body) if a.json else line(body)) + "\n")
                out.flush()
    finally:
        stop.set()
        await nc.close()
    if code["rc"] == 1:
        print(f"corral: lost the NATS connection ({errors[-1] if errors else 'closed'})",
              file=sys.stderr)
    return code["rc"]


def cmd_tail(a: argparse.Namespace) -> int:
    url = setting("CORRAL_NATS_URL", a.nats_url)
    if not url:
        raise ConfigError("CORRAL_NATS_URL not set: pass --nats-url, export it, or run "
                          "`corral up` so .corral/dev.env exists here or in a parent")
    return asyncio.run(tail(url, a))


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("events", help="platform events")
    s = ev.add_subparsers(dest="events_cmd", required=True)
    t = s.add_parser("tail", help="follow events live (Ctrl-C stops)")
    t.add_argument("--org")
    t.add_argument("--sandbox")
    t.add_argument("--type", action="append", help="event type, repeatable "
                   "(HostHeartbeat is hidden unless named)")
    t.add_argument("--since", type=parse_since, metavar="DURATION_OR_ISO",
                   help="replay from then (10m, 2h, 2024-05-01T12:00Z); default: new only")
    t.add_argument("--json", action="store_true", help="one JSON event per line")
    t.add_argument("--nats-url")
    t.set_defaults(fn=cmd_tail)

"""NATS JetStream adapter: topology, publishing with dedupe ids, and
consumers that validate every message and dead-letter poison."""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from opentelemetry.trace import SpanKind

from contracts import Envelope, InvalidMessage, parse_message
from contracts.subjects import ConsumerDef, dlq_subject, service_inbox, subject_for

from .logging import log_context, redact
from .metrics import DEAD_LETTERS
from .settings import CommonSettings
from .service import warn_if_plaintext
from .topology import ensure_consumer, ensure_streams
from .tracing import context_from, current_traceparent, exporting, tracer

log = logging.getLogger("corral.bus")
# The largest message Corral sends whole (an event: env and metadata are capped
# at 64 KiB; exec chunks are smaller). Anything larger travels in parts.
MIN_MAX_PAYLOAD = 256 * 1024
_DENIED = re.compile(r'permissions violation for publish to "?([^"\s]+)', re.IGNORECASE)
PullSub = JetStreamContext.PullSubscription
Handler = Callable[[Envelope], Awaitable[None]]


class Retry(Exception):
    """Raised by a handler to ask for redelivery after `delay_s`."""

    def __init__(self, reason: str, delay_s: float = 1.0):
        super().__init__(reason)
        self.delay_s = delay_s


class Poison(Exception):
    """Raised by a handler for a valid message that can never be processed."""


@dataclass
class DeadLetter:
    consumer: str
    subject: str
    reason: str
    deliveries: int
    payload: str
    headers: dict


def servers_of(url: str) -> list[str]:
    """CORRAL_NATS_URL: one server, or a cluster's as a comma-separated list."""
    return [u.strip() for u in url.split(",") if u.strip()]


class Bus:
    """One principal's connection. `user`/`password`: its bus credentials;
    `inbox`: the reply prefix only it may read. A host agent's bus publishes
    sandbox facts on its own subject once `publisher_host` is known."""

    def __init__(self, url: str, name: str, user: str = "", password: str = "",
                 inbox: str | None = None, tls: ssl.SSLContext | None = None):
        self.url = url
        self.name = name
        self.user, self._password, self.inbox, self.tls = user, password, inbox, tls
        self.publisher_host: str | None = None
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self._denied: dict[str, float] = {}  # subject -> when the server refused it
        self.stream_replicas = 1  # copies of each stream ensure_topology asks for

    @classmethod
    def of_service(cls, settings: CommonSettings, service: str, name: str) -> Bus:
        """A control-plane service's connection, with its credentials and inbox."""
        bus = cls(settings.nats_url, name, settings.nats_user, settings.nats_password,
                  service_inbox(service), settings.nats_tls())
        bus.stream_replicas = settings.stream_replicas
        return bus

    def denied(self, subject: str, within_s: float = 60) -> bool:
        """Whether the server refused a publish to `subject` lately."""
        return time.monotonic() - self._denied.get(subject.lower(), -1e9) < within_s

    async def connect(self, timeout_s: float = 30) -> None:
        async def _err(e: Exception) -> None:
            found = _DENIED.search(str(e))
            if found:
                if len(self._denied) > 1000:
                    self._denied.clear()
                self._denied[found.group(1).lower()] = time.monotonic()
            log.warning("nats error: %s", e)

        creds: dict[str, Any] = {"user": self.user, "password": self._password} \
            if self.user else {}
        if self.tls is not None:
            creds["tls"] = self.tls
        self.nc = await nats.connect(
            servers_of(self.url), name=self.name, connect_timeout=2, max_reconnect_attempts=-1,
            reconnect_time_wait=0.5, error_cb=_err, allow_reconnect=True,
            inbox_prefix=self.inbox or "_INBOX", **creds)
        self.js = self.nc.jetstream(timeout=10)
        if self.nc.max_payload < MIN_MAX_PAYLOAD:
            await self.nc.close()
            raise SystemExit(f"the NATS server's max_payload is {self.nc.max_payload} bytes; "
                             f"Corral needs at least {MIN_MAX_PAYLOAD}")
        log.info("connected to nats %s as %s", redact(self.url), self.user or "(anonymous)")
        for url in servers_of(self.url):
            warn_if_plaintext("NATS connection", urlparse(url).hostname or "",
                              tls=self.tls is not None or url.startswith("tls://"))

    async def close(self) -> None:
        if self.nc and not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception:  # noqa: BLE001 - cannot drain (already closing): close
                await self.nc.close()

    @property
    def client(self) -> Client:
        """The connected core NATS client (for request/reply adapters)."""
        if self.nc is None:
            raise RuntimeError(f"{self.name}: not connected")
        return self.nc

    @property
    def jetstream(self) -> JetStreamContext:
        if self.js is None:
            raise RuntimeError(f"{self.name}: not connected")
        return self.js

    @property
    def connected(self) -> bool:
        return bool(self.nc and self.nc.is_connected)

    async def ensure_topology(self, *consumers: ConsumerDef) -> None:
        """Create or update every stream (see topology.py), and this service's
        durable consumers; safe to repeat."""
        assert self.js
        await ensure_streams(self.js, self.stream_replicas)
        for c in consumers:
            await ensure_consumer(self.js, c)

    async def ensure_consumer(self, c: ConsumerDef) -> None:
        assert self.js
        await ensure_consumer(self.js, c)

    def headers_for(self, msg: Envelope, in_span: bool = False) -> dict[str, str]:
        """`in_span`: called inside this message's producer span, whose context
        (a child of the message's own) is the one to carry."""
        h = {"Nats-Msg-Id": msg.event_id, "Corral-Type": msg.type, "Corral-Op-Id": msg.op_id}
        tp = (current_traceparent() or msg.traceparent) if in_span \
            else (msg.traceparent or current_traceparent())
        if tp:
            h["traceparent"] = tp
        return h

    @staticmethod
    def _send_span(msg: Envelope, subject: str) -> AbstractContextManager[object]:
        """A producer span (messaging semantic conventions) while spans are
        exported: a child of the message's own trace context, else of the
        current one."""
        if not exporting():
            return nullcontext()
        parent = context_from(msg.traceparent)
        return tracer("corral.bus").start_as_current_span(
            f"send {msg.type}", context=parent, kind=SpanKind.PRODUCER, attributes={
                "messaging.system": "nats", "messaging.operation.type": "send",
                "messaging.operation.name": "publish", "messaging.destination.name": subject,
                "messaging.message.id": msg.event_id, "corral.op_id": msg.op_id})

    async def publish(self, msg: Envelope, subject: str | None = None,
                      timeout_s: float = 10) -> int:
        """Publish to JetStream and wait for the ack; returns the stream sequence."""
        assert self.js
        subject = subject or subject_for(msg, self.publisher_host)
        with self._send_span(msg, subject):
            ack = await self.js.publish(subject, msg.to_json(), timeout=timeout_s,
                                        headers=self.headers_for(msg, in_span=exporting()))
        return ack.seq

    async def publish_pipelined(self, items: list[tuple[Envelope, str]],
                                timeout_s: float = 10) -> list[Exception | None]:
        """Send every message in order, then wait for all their acks at once:
        one round trip for a batch instead of one per message. Returns, per
        message, None (stored) or why not."""
        assert self.js
        sent: list[asyncio.Future[Any] | Exception] = []
        for msg, subject in items:
            try:
                with self._send_span(msg, subject):
                    sent.append(await self.js.publish_async(
                        subject, msg.to_json(), headers=self.headers_for(msg, in_span=exporting())))
            except Exception as e:  # noqa: BLE001 - reported per message
                sent.append(e)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        out: list[Exception | None] = []
        for f in sent:
            if isinstance(f, Exception):
                out.append(f)
                continue
            try:  # wait_for cancels the future on timeout, which frees its slot
                await asyncio.wait_for(f, max(0.0, deadline - loop.time()))
                out.append(None)
            except TimeoutError:
                out.append(NatsTimeout())
            except Exception as e:  # noqa: BLE001 - reported per message
                out.append(e)
        return out

    async def dead_letter(self, letter: DeadLetter) -> None:
        assert self.js
        DEAD_LETTERS.labels(letter.consumer).inc()
        body = json.dumps(letter.__dict__).encode()
        await self.js.publish(dlq_subject(letter.consumer), body, timeout=10)
        log.warning("dead-lettered message from %s: %s", letter.subject, letter.reason,
                    extra={"consumer": letter.consumer})

    async def consume(self, c: ConsumerDef, handler: Handler, stop: asyncio.Event,
                      batch: int = 32, concurrency: int = 1,
                      order_key: Callable[[str], str] | None = None) -> None:
        """Pull loop: each message validated, handled, then acked.

        Invalid -> DLQ + term. Handler raises Retry/other -> nak with backoff;
        past `max_deliver` deliveries -> DLQ + term. Never blocks the stream.
        With `concurrency` > 1, messages run in parallel except that messages
        with one `order_key(subject)` keep their order (default: the subject
        less its last token).
        """
        assert self.js
        sub = await self.js.pull_subscribe_bind(c.durable, stream=c.stream)
        if concurrency > 1:
            await self._consume_parallel(sub, c, handler, stop, batch, concurrency,
                                         order_key or _subject_prefix)
            return
        pull = Puller(sub, c, stop, batch)
        while not stop.is_set():
            for m in await pull.next():
                await self._deliver(c, m, handler)
        await _unsubscribe(sub)

    async def _consume_parallel(self, sub: PullSub, c: ConsumerDef, handler: Handler,
                                stop: asyncio.Event, batch: int, concurrency: int,
                                order_key: Callable[[str], str]) -> None:
        slots = asyncio.Semaphore(concurrency)
        tails: dict[str, asyncio.Task[None]] = {}
        running: set[asyncio.Task[None]] = set()

        def forget(key: str, task: asyncio.Task[None]) -> None:
            if tails.get(key) is task:
                tails.pop(key)

        async def run(m: Msg, before: asyncio.Task[None] | None) -> None:
            if before is not None:  # wait outside the semaphore: no slot deadlock
                await asyncio.gather(before, return_exceptions=True)
            async with slots:
                await self._deliver(c, m, handler)

        pull = Puller(sub, c, stop, batch)
        while not stop.is_set():
            for m in await pull.next():
                key = order_key(m.subject)
                task = asyncio.ensure_future(run(m, tails.get(key)))
                tails[key] = task
                running.add(task)
                task.add_done_callback(running.discard)
                task.add_done_callback(functools.partial(forget, key))
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        await _unsubscribe(sub)

    async def _deliver(self, c: ConsumerDef, m: Msg, handler: Handler) -> None:
        deliveries = m.metadata.num_delivered if m.metadata else 1
        headers = dict(m.headers or {})
        try:
            msg = parse_message(m.data, subject=m.subject)
        except InvalidMessage as e:
            await self.dead_letter(DeadLetter(c.durable, m.subject, e.reason, deliveries,
                                              m.data[:65536].decode("utf-8", "replace"), headers))
            await m.term()
            return
        with log_context(op_id=msg.op_id, sandbox_id=getattr(msg, "sandbox_id", None),
                         host_id=getattr(msg, "host_id", None)):
            span_ctx = context_from(headers.get("traceparent") or msg.traceparent)
            with tracer("corral.bus").start_as_current_span(
                    f"process {msg.type}", context=span_ctx, kind=SpanKind.CONSUMER, attributes={
                        "messaging.system": "nats", "messaging.operation.type": "process",
                        "messaging.operation.name": "process",
                        "messaging.destination.name": m.subject,
                        "messaging.consumer.group.name": c.durable,
                        "messaging.message.id": msg.event_id,
                        "messaging.message.body.size": len(m.data),
                        "corral.deliveries": deliveries, "corral.op_id": msg.op_id}):
                keepalive = asyncio.ensure_future(self._keep_alive(m, c.ack_wait_s))
                try:
                    await handler(msg)
                except Poison as e:
                    await self.dead_letter(DeadLetter(
                        c.durable, m.subject, f"poison: {e}", deliveries,
                        m.data[:65536].decode("utf-8", "replace"), headers))
                    await m.term()
                    return
                except Exception as e:
                    reason = str(e) if isinstance(e, Retry) else f"{e.__class__.__name__}: {e}"
                    if deliveries >= c.max_deliver:
                        await self.dead_letter(DeadLetter(
                            c.durable, m.subject, f"gave up after {deliveries}: {reason}",
                            deliveries, m.data[:65536].decode("utf-8", "replace"), headers))
                        await m.term()
                        return
                    delay = e.delay_s if isinstance(e, Retry) else min(0.2 * 2 ** deliveries, 10)
                    if not isinstance(e, Retry):
                        log.exception("handler %s failed (delivery %d)", c.durable, deliveries)
                    await m.nak(delay=delay)
                    return
                finally:
                    keepalive.cancel()
        await m.ack()

    @staticmethod
    async def _keep_alive(m: Msg, ack_wait_s: float) -> None:
        """Tell the server a long handler is still working, so it does not redeliver."""
        while True:
            await asyncio.sleep(max(ack_wait_s / 3, 0.5))
            try:
                await m.in_progress()
            except Exception:  # noqa: BLE001 - connection trouble: redelivery will cope
                return


def _subject_prefix(subject: str) -> str:
    return subject.rsplit(".", 1)[0]


class Puller:
    """Fetches for one pull consumer. A long poll asks for one message: a
    multi-message fetch that starts on an empty consumer stalls a message that
    arrives near its timeout by up to that timeout (nats-py 2.16, 12-15% of
    messages arriving at random; bench/fetch_stall.py). Batches are asked for
    only while the last fetch came back full, i.e. while there is a backlog."""

    def __init__(self, sub: PullSub, c: ConsumerDef, stop: asyncio.Event, batch: int) -> None:
        self.sub, self.c, self.stop, self.batch = sub, c, stop, batch
        self.ask = 1

    async def next(self) -> list[Msg]:
        """Up to `ask` messages, or none after a second; rides out reconnects."""
        ask = self.ask
        try:
            msgs = await self.sub.fetch(ask, timeout=1)
        except (TimeoutError, NatsTimeout):
            msgs = []
        except Exception as e:  # noqa: BLE001 - reconnecting
            if not self.stop.is_set():
                log.warning("fetch from %s failed: %r", self.c.durable, e)
                await asyncio.sleep(0.5)
            msgs = []
        self.ask = self.batch if len(msgs) >= ask else 1  # ask >= 1: a full fetch
        return msgs


async def _unsubscribe(sub: PullSub) -> None:
    try:
        await sub.unsubscribe()
    except Exception:  # noqa: BLE001 - the connection is already gone
        pass

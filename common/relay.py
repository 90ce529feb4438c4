"""Outbox relay: the store's notification log, published to JetStream in order.

Each stored event carries its contract message. The relay publishes it with
`Nats-Msg-Id = event_id`, waits for the stream's ack, then advances its cursor
(a tracking row in the same database). After a crash it resumes from the
cursor; anything republished is dropped by the stream's duplicate window.

A message the bus can never take (larger than the server's max_payload,
refused by the stream or by our own permissions, or no longer valid) is
parked: recorded on the dead-letter stream, logged as an alarm, and passed
over, so everything behind it flows on. Outages are retried, never parked.
"""
from __future__ import annotations

import asyncio
import json
import logging

from eventsourcing.application import Application
from eventsourcing.persistence import IntegrityError, Tracking

from nats.errors import MaxPayloadError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import BadRequestError

from contracts import Envelope, InvalidMessage, parse_message
from contracts.subjects import subject_for

from .bus import Bus, DeadLetter
from .eventstore import tracking

log = logging.getLogger("corral.relay")


class OutboxRelay:
    def __init__(self, app: Application, bus: Bus, name: str = "outbox-relay",
                 batch: int = 100, poll_s: float = 0.25, dead_letters: str | None = None):
        self.app = app
        self.bus = bus
        self.name = name
        self.dead_letters = dead_letters or name  # corral.dlq.<this> for parked messages
        self.batch = batch
        self.poll_s = poll_s
        self._wake = asyncio.Event()
        self._tracker = tracking(app)
        self.published = 0
        self.parked = 0

    def wake(self) -> None:
        """Called after a local save so the relay does not wait for its poll."""
        self._wake.set()

    def position(self) -> int:
        return self._tracker.max_tracking_id(self.name) or 0

    def backlog(self) -> int:
        """Events stored and not yet published (or passed over)."""
        top = self.app.recorder.max_notification_id() or 0
        return max(0, top - self.position())

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wake.clear()  # before the pass: a save during it wakes the next one
            try:
                moved = await self.drain_once()
            except Exception:  # bus or store down: retry, never skip
                log.exception("relay pass failed; retrying")
                moved = 0
                await asyncio.sleep(1)
            if moved == 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)
                except TimeoutError:
                    pass

    async def drain_once(self) -> int:
        pos = await asyncio.to_thread(self.position)
        notes = await asyncio.to_thread(
            self.app.recorder.select_notifications, pos, self.batch, None, (),
            inclusive_of_start=False)
        if not notes:
            return 0
        batch: list[tuple[int, Envelope, str]] = []  # (notification id, message, subject)
        for n in notes:
            envelope = json.loads(n.state).get("envelope")
            if envelope is None:
                continue  # events without a contract stay private
            raw = json.dumps(envelope).encode()
            try:
                msg = parse_message(raw)
            except InvalidMessage as e:
                await self._park("?", raw, f"invalid: {e.reason}")
                continue
            batch.append((n.id, msg, subject_for(msg, self.bus.publisher_host)))
        last_done = notes[-1].id
        for _, msg, _subject in batch:
            log.info("publishing %s", msg.type, extra={
                "stage": f"published:{msg.type}", "sandbox_id": getattr(msg, "sandbox_id", None)})
        results = await self.bus.publish_pipelined([(m, s) for _, m, s in batch])
        for (note_id, msg, subject), err in zip(batch, results, strict=True):
            if err is None:
                self.published += 1
            elif isinstance(err, MaxPayloadError | BadRequestError):
                await self._park(subject, msg.to_json(), f"{err.__class__.__name__}: {err}"[:500])
            elif isinstance(err, TimeoutError | NatsTimeout) and self.bus.denied(subject):
                await self._park(subject, msg.to_json(), "publish permission denied")
            else:  # an outage: resume from this message (later ones that got
                # through are dropped as duplicates by the stream's window)
                last_done = note_id - 1
                if last_done > pos:
                    await asyncio.to_thread(self._advance, last_done)
                raise err
        # once per batch: a crash mid-batch republishes, which the stream's
        # duplicate window (Nats-Msg-Id = event id) and every consumer's
        # idempotency absorb
        await asyncio.to_thread(self._advance, last_done)
        return len(notes)

    async def _park(self, subject: str, raw: bytes, reason: str) -> None:
        """Record a message the bus will never take, raise the alarm, move on."""
        await self.bus.dead_letter(DeadLetter(self.dead_letters, subject, reason, 0,
                                              raw[:65536].decode("utf-8", "replace"), {}))
        self.parked += 1
        log.error("ALARM: parked an unpublishable message from %s: %s", self.name, reason,
                  extra={"alarm": "relay_parked", "subject": subject[:200]})

    def _advance(self, notification_id: int) -> None:
        try:
            self._tracker.insert_tracking(Tracking(self.name, notification_id))
        except IntegrityError:
            pass  # another relay instance already moved past it

"""Outbox relay: the store's notification log, published to JetStream in order.

Each stored event carries its contract message. The relay publishes it with
`Nats-Msg-Id = event_id`, waits for the stream's ack, then advances its cursor
(a tracking row in the same database). After a crash it resumes from the
cursor; anything republished is dropped by the stream's duplicate window.
"""
from __future__ import annotations

import asyncio
import json
import logging

from eventsourcing.application import Application
from eventsourcing.persistence import IntegrityError, Tracking

from contracts import parse_message

from .bus import Bus
from .eventstore import tracking

log = logging.getLogger("corral.relay")


class OutboxRelay:
    def __init__(self, app: Application, bus: Bus, name: str = "outbox-relay",
                 batch: int = 100, poll_s: float = 0.25):
        self.app = app
        self.bus = bus
        self.name = name
        self.batch = batch
        self.poll_s = poll_s
        self._wake = asyncio.Event()
        self._tracker = tracking(app)
        self.published = 0

    def wake(self) -> None:
        """Called after a local save so the relay does not wait for its poll."""
        self._wake.set()

    def position(self) -> int:
        return self._tracker.max_tracking_id(self.name) or 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                moved = await self.drain_once()
            except Exception:  # bus or store down: retry, never skip
                log.exception("relay pass failed; retrying")
                moved = 0
                await asyncio.sleep(1)
            if moved == 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)
                except TimeoutError:
                    pass

    async def drain_once(self) -> int:
        pos = await asyncio.to_thread(self.position)
        notes = await asyncio.to_thread(
            self.app.recorder.select_notifications, pos, self.batch, None, (),
            inclusive_of_start=False)
        for n in notes:
            envelope = json.loads(n.state).get("envelope")
            if envelope is not None:  # events without a contract stay private
                await self.bus.publish(parse_message(json.dumps(envelope).encode()))
                self.published += 1
            await asyncio.to_thread(self._advance, n.id)
        return len(notes)

    def _advance(self, notification_id: int) -> None:
        try:
            self._tracker.insert_tracking(Tracking(self.name, notification_id))
        except IntegrityError:
            pass  # another relay instance already moved past it

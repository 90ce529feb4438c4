"""Metering use cases over the event store (sync: call via asyncio.to_thread)."""
from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from common.eventstore import StoreApp, StoreConflict
from contracts import Envelope

from ..domain.meter import METERED, SNAPSHOT_METERED, Meter, NotPlacedYet, OrgMismatch, meter_id

log = logging.getLogger("corral.billing")
Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Metering(StoreApp):
    name = "billing"

    def __init__(self, env: dict[str, str] | None = None, period_s: int = 3600,
                 grace_s: float = 60, clock: Clock = utcnow):
        super().__init__(env=env)
        self.period_s = period_s
        self.grace_s = grace_s
        self.clock = clock
        self._open: set[uuid.UUID] = set()  # meters with a run open
        self._position = 0  # notification log position folded into _open

    def meter(self, sandbox_id: str) -> Meter | None:
        return self._get(meter_id(sandbox_id))

    def observe(self, msg: Envelope) -> int:
        """Fold a sandbox fact in and cut what is due; returns usage records made.

        A host's fact counts only from the host it was placed on. Raises
        OrgMismatch or WrongSource for a fact that can never apply (poison),
        NotPlacedYet for one that came before its placement (retry)."""
        if msg.type not in METERED | SNAPSHOT_METERED and msg.type != "SandboxScheduled":
            return 0
        fact = msg.model_dump(mode="json")
        snap_id = fact["snapshot_id"] if msg.type in SNAPSHOT_METERED else None

        def attempt() -> int:  # races: another instance, the ticker
            meter = (self._get(meter_id(fact["sandbox_id"], snap_id))
                     or Meter(fact["sandbox_id"], fact["org_id"], snap_id))
            if fact["org_id"] != meter.org_id:
                raise OrgMismatch("fact's org does not own the sandbox")
            if msg.type == "SandboxScheduled":
                meter.place(fact["host_id"])
            else:
                placement = self.meter(fact["sandbox_id"]) if snap_id else meter
                if placement is None:  # a snapshot's host is its sandbox's
                    raise NotPlacedYet(f"{msg.type} before its sandbox's placement")
                if placement.org_id != meter.org_id:
                    raise OrgMismatch("fact's org does not own the sandbox")
                placement.check_source(msg.via_host)
                meter.observe(fact)
            usage = meter.cut(self.clock(), self.period_s, self.grace_s)
            if not meter.pending_events:
                return 0
            self._save(meter)
            for u in usage:
                log.info("usage %s: %.1f vcpu-s", u.event_id, u.vcpu_seconds)
            return len(usage)
        return self.retry_on_conflict(attempt, StoreConflict(
            "meter kept changing while observing"))

    def cut_due(self) -> int:
        """Cut full periods of every open run; returns usage records made."""
        self._refresh_open()
        made = 0
        for mid in list(self._open):
            made += self.retry_on_conflict(functools.partial(self._cut_open, mid))
        self._refresh_open()
        return made

    def _cut_open(self, mid: uuid.UUID) -> int:
        meter = self._get(mid)
        if meter is None:
            return 0
        usage = meter.cut(self.clock(), self.period_s, self.grace_s)
        if not meter.pending_events:
            return 0
        self._save(meter)
        return len(usage)

    def _refresh_open(self, batch: int = 500) -> None:
        """Follow the notification log to know which meters have an open run."""
        while True:
            notes = self.recorder.select_notifications(self._position, batch, None, (),
                                                       inclusive_of_start=False)
            if not notes:
                return
            touched = {n.originator_id for n in notes}
            self._position = notes[-1].id
            for oid in touched:
                uid = oid if isinstance(oid, uuid.UUID) else uuid.UUID(str(oid))
                meter = self._get(uid)
                if isinstance(meter, Meter) and meter.running:
                    self._open.add(uid)
                else:
                    self._open.discard(uid)

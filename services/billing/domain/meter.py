"""The Meter aggregate: one per sandbox, folds run facts into usage periods;
one per snapshot too, its "run" being the time it is held (storage).

A run starts with SandboxStarted and ends with the first later end fact
(Stopped/Destroyed/Lost/Failed). SandboxRecovered (a sandbox recorded lost
that ran on after all) starts a run again at the moment it was recorded lost,
so the time it was believed lost is billed too. Each run is cut into periods
of `period_s` aligned to the run's start, plus a final partial period at its end. Every
period is one UsageRecorded with a stable id: uuid5(sandbox_id, period_start).
Facts are deduplicated by event_id, so redelivery changes nothing.

Ordering: an end fact seen before its run's Started is kept as pending and
pairs with a later Started that precedes it. A second Started seen while a
run is open is ignored (it is taken as a re-emission of the same run).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from eventsourcing.domain import Aggregate, event

from common.timefmt import utc_text
from contracts.usage import UsageRecorded

NAMESPACE = uuid.UUID("0b6c3f2e-52d4-4c1b-9a7e-4d8f7e1c2a90")
START = "SandboxStarted"
# adopted back after it was recorded lost: a run again, from when it was lost
RECOVERED = "SandboxRecovered"
ENDS = frozenset({"SandboxStopped", "SandboxDestroyed", "SandboxLost", "SandboxFailed"})
METERED = ENDS | {START, RECOVERED}
SNAPSHOT_START = "SnapshotCreated"
SNAPSHOT_ENDS = frozenset({"SnapshotDeleted", "SnapshotFailed"})
SNAPSHOT_METERED = SNAPSHOT_ENDS | {SNAPSHOT_START}
STARTS = frozenset({START, RECOVERED, SNAPSHOT_START})
MIB = 1 << 20
MAX_PENDING = 16
MAX_CUTS = 1000  # per call: keeps one transaction bounded after a long outage


def meter_id(sandbox_id: str, snapshot_id: str | None = None) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"meter/snap/{snapshot_id}" if snapshot_id
                      else f"meter/{sandbox_id}")


def ts(value: str | datetime) -> datetime:
    dt = datetime.fromisoformat(value) if isinstance(value, str) else value
    if dt.tzinfo is None:
        raise ValueError("timestamps must carry a timezone")
    return dt.astimezone(UTC)


def usage_event_id(sandbox_id: str, period_start: str | datetime) -> str:
    # The id's name text is fixed for ever (isoformat of UTC): the same period
    # must keep the same id across versions, or a redelivery would bill twice.
    return str(uuid.uuid5(NAMESPACE, f"usage/{sandbox_id}/{ts(period_start).isoformat()}"))


class OrgMismatch(ValueError):
    """A fact names another org than the sandbox's first fact did."""


class WrongSource(ValueError):
    """A host reported on a sandbox placed on another host."""


class NotPlacedYet(Exception):
    """A host's fact arrived before the placement it must match (retry)."""


@dataclass(frozen=True)
class Cut:
    start: datetime
    end: datetime
    closes: bool  # the run's last period


class Meter(Aggregate):
    @staticmethod
    def create_id(sandbox_id: str, org_id: str, snapshot_id: str | None = None) -> uuid.UUID:
        return meter_id(sandbox_id, snapshot_id)

    @event("Opened")
    def __init__(self, sandbox_id: str, org_id: str, snapshot_id: str | None = None):
        self.sandbox_id = sandbox_id
        self.org_id = org_id
        self.snapshot_id = snapshot_id  # a snapshot's meter: storage, not compute
        self.storage_mib = 0.0
        self.seen: list[str] = []
        self.op_id = "-"
        self.host_id: str | None = None
        self.placed_on: str | None = None  # the host the scheduler placed it on
        self.vcpus = 0
        self.memory_mib = 0
        self.run_start: str | None = None  # open run (ISO, UTC)
        self.run_end: str | None = None  # its end, once known
        self.billed_until: str | None = None  # end of the last cut period
        self.last_end: str | None = None  # end of the last closed run
        self.pending_ends: list[str] = []  # ends seen before their start
        self.usage_ids: list[str] = []

    @property
    def running(self) -> bool:
        return self.run_start is not None

    # -- commands (decide) ---------------------------------------------------

    def place(self, host_id: str) -> bool:
        """The scheduler's placement: the only host whose facts count."""
        if self.placed_on == host_id:
            return False
        self._placed(host_id=host_id)
        return True

    def check_source(self, via_host: str | None) -> None:
        """`via_host`: the host that published the fact on its own subject (None:
        the control plane). Raises NotPlacedYet or WrongSource."""
        if via_host is None:
            return
        if self.placed_on is None:
            raise NotPlacedYet(f"fact from {via_host} before the placement")
        if via_host != self.placed_on:
            raise WrongSource(f"fact from host {via_host}; placed on {self.placed_on}")

    def observe(self, fact: dict[str, Any]) -> bool:
        """Fold one sandbox (or, on a snapshot's meter, snapshot) fact in; False
        if seen before or not metered."""
        kinds = SNAPSHOT_METERED if self.snapshot_id else METERED
        if fact["type"] not in kinds or fact["event_id"] in self.seen:
            return False
        if fact["org_id"] != self.org_id:
            raise OrgMismatch("fact's org does not own the sandbox")
        shape = ({"size_bytes": fact.get("size_bytes")} if self.snapshot_id else
                 {"vcpus": fact.get("vcpus"), "memory_mib": fact.get("memory_mib")})
        if fact["type"] == RECOVERED and fact.get("state") == "starting":
            return False  # still booting: its SandboxStarted opens the run
        at = fact["lost_at"] if fact["type"] == RECOVERED else fact["occurred_at"]
        self._observed(event_id=fact["event_id"], kind=fact["type"], at=utc_text(ts(at)),
                       op_id=fact.get("op_id") or "-", host_id=fact.get("host_id"), **shape)
        return True

    def due(self, now: datetime, period_s: int, grace_s: float = 0) -> list[Cut]:
        """Periods ready to bill: full periods past `now - grace`, and the end."""
        if self.run_start is None or self.billed_until is None:
            return []
        start, billed = ts(self.run_start), ts(self.billed_until)
        end = ts(self.run_end) if self.run_end else None
        period = timedelta(seconds=period_s) if period_s > 0 else None
        cuts: list[Cut] = []
        while len(cuts) < MAX_CUTS:
            boundary = start + ((billed - start) // period + 1) * period if period else None
            if end is not None and (boundary is None or end <= boundary):
                cuts.append(Cut(billed, end, closes=True))
                break
            if boundary is None or boundary + timedelta(seconds=grace_s) > now:
                break
            cuts.append(Cut(billed, boundary, closes=False))
            billed = boundary
        return cuts

    def cut(self, now: datetime, period_s: int, grace_s: float = 0) -> list[UsageRecorded]:
        """Record every due period; returns the usage line items recorded."""
        out = []
        for c in self.due(now, period_s, grace_s):
            usage = self.usage_for(c) if c.end > c.start else None
            self._cut(period_start=utc_text(c.start), period_end=utc_text(c.end), closes=c.closes,
                      envelope=usage.model_dump(mode="json") if usage else None)
            if usage:
                out.append(usage)
        return out

    def usage_for(self, c: Cut) -> UsageRecorded:
        secs = (c.end - c.start).total_seconds()
        key = f"snap/{self.snapshot_id}" if self.snapshot_id else self.sandbox_id
        return UsageRecorded(
            event_id=usage_event_id(key, c.start), op_id=self.op_id[:64] or "-",
            occurred_at=c.end, org_id=self.org_id, sandbox_id=self.sandbox_id,
            snapshot_id=self.snapshot_id, host_id=self.host_id, period_start=c.start,
            period_end=c.end, vcpu_seconds=self.vcpus * secs,
            memory_mib_seconds=self.memory_mib * secs,
            storage_mib_seconds=self.storage_mib * secs)

    # -- events (apply) ------------------------------------------------------

    @event("Placed")
    def _placed(self, host_id: str) -> None:
        self.placed_on = host_id

    @event("Observed")
    def _observed(self, event_id: str, kind: str, at: str, op_id: str, host_id: str | None,
                  vcpus: int | None = None, memory_mib: int | None = None,
                  size_bytes: int | None = None) -> None:
        self.seen.append(event_id)
        if kind == RECOVERED and self.last_end is not None and ts(at) < ts(self.last_end):
            at = self.last_end  # billed up to here already: the gap starts where that ended
        if kind in STARTS:
            if self.run_start is None:
                self.storage_mib = (size_bytes or 0) / MIB
            self._start(at, op_id, host_id, vcpus or 0, memory_mib or 0)
        else:
            self._end(at, op_id, host_id)

    def _start(self, at: str, op_id: str, host_id: str | None, vcpus: int,
               memory_mib: int) -> None:
        if self.run_start is not None:
            return  # a run is open: same run, re-emitted
        if self.last_end is not None and ts(at) < ts(self.last_end):
            return  # a stale start from a run already billed
        self.run_start = self.billed_until = at
        self.op_id, self.host_id, self.vcpus, self.memory_mib = op_id, host_id, vcpus, memory_mib
        later = sorted((e for e in self.pending_ends if ts(e) >= ts(at)), key=ts)
        self.run_end = later[0] if later else None
        self.pending_ends = [e for e in later[1:]]

    def _end(self, at: str, op_id: str, host_id: str | None) -> None:
        if self.run_start is not None and self.run_end is None:
            assert self.billed_until is not None
            self.run_end = max(at, self.billed_until, key=ts)
            self.op_id = op_id
        elif self.run_start is None and (self.last_end is None or ts(at) > ts(self.last_end)):
            self.pending_ends = (self.pending_ends + [at])[-MAX_PENDING:]

    @event("Cut")
    def _cut(self, period_start: str, period_end: str, closes: bool,
             envelope: dict[str, Any] | None) -> None:
        # `envelope` makes the outbox relay publish this event (None: nothing to bill)
        self.billed_until = period_end
        if envelope is not None:
            self.usage_ids.append(envelope["event_id"])
        if closes:
            self.last_end = period_end
            self.run_start = self.run_end = self.billed_until = None

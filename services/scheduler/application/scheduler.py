"""Scheduler use cases over its own event store (sync: call via to_thread)."""
from __future__ import annotations

import logging
import threading
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from eventsourcing.domain import Aggregate, MutableOrImmutableAggregate
from eventsourcing.persistence import IntegrityError

from common.eventstore import StoreApp, StoreConflict
from common.timefmt import utc_text
from contracts.commands import (DestroySandbox, HostCommand, PauseSandbox, ResumeSandbox,
                                StartSandbox, StopSandbox)
from contracts.image import ImageBuildFailed
from contracts.host import HostHeartbeat, HostLost, HostRegistered, HostRevoked
from contracts.sandbox import (Failure, SandboxDestroyed, SandboxEvent, SandboxFailed, SandboxLost,
                               SandboxRequested, SandboxScheduled, SandboxSpec)
from contracts.snapshot import (DeleteSnapshot, SnapshotDeleted, SnapshotEvent, SnapshotFailed,
                                TakeSnapshot)

from ..domain.host import FactRecord, Host, host_uuid, summary
from ..domain.placement import Placement, placement_uuid
from ..domain.policy import HostSummary, choose_host

from .builds import BuildCases, NoCapacity, WrongSource, envelope_doc
from .reconcile import ReconcileCases

log = logging.getLogger("corral.scheduler")
INTENT_COMMANDS: dict[str, type[HostCommand]] = {
    "SandboxDestroyRequested": DestroySandbox, "SandboxStopRequested": StopSandbox,
    "SandboxPauseRequested": PauseSandbox, "SandboxResumeRequested": ResumeSandbox,
    "SandboxStartRequested": StartSandbox}
LOST_NS = uuid.UUID("4d2c8e6a-1b3f-4a5c-9d7e-0f1a2b3c4d5e")


class Scheduler(BuildCases, ReconcileCases, StoreApp):
    name = "scheduler"
    # a host gains events with every placement, for ever: load from a snapshot
    snapshotting_intervals: ClassVar[dict[type[MutableOrImmutableAggregate[Any]], int]] = {
        Host: 100}

    def __init__(self, env: dict[str, str] | None = None) -> None:
        super().__init__(env)
        self._summaries: dict[str, HostSummary] = {}  # host id -> as last read here
        self._suspects = {}
        self._suspects_lock = threading.Lock()
        self._last_inventory = {}

    def host(self, host_id: str) -> Host | None:
        h = self._get(host_uuid(host_id))
        if isinstance(h, Host):
            self._summaries[host_id] = summary(h)
        return h

    def _save(self, *aggregates: Any) -> None:
        super()._save(*aggregates)
        for a in aggregates:  # what this instance just wrote is the freshest view
            if isinstance(a, Host):
                self._summaries[a.host_id] = summary(a)

    def _summary(self, host_id: str) -> HostSummary | None:
        s = self._summaries.get(host_id)
        if s is None and self.host(host_id) is not None:
            s = self._summaries[host_id]
        return s

    def _choose(self, alive: list[str], vcpus: int, memory_mib: int) -> Host | None:
        """The least-loaded host that fits, by the summaries, each pick checked
        on the host itself (one load, not one per host); when the summaries
        say nothing fits they are all read afresh once."""
        tried: set[str] = set()
        for fresh in (False, True):
            if fresh:
                for x in alive:
                    self.host(x)
                tried.clear()
            while True:
                cands = [s for s in (self._summary(x) for x in alive if x not in tried) if s]
                pick = choose_host(cands, vcpus, memory_mib)
                if pick is None:
                    break
                h = self.host(pick.host_id)
                if h is not None and h.fits(vcpus, memory_mib):
                    return h
                tried.add(pick.host_id)
        return None

    def placement(self, sandbox_id: str) -> Placement | None:
        return self._get(placement_uuid(sandbox_id))

    # --- placement -------------------------------------------------------
    def place(self, req: SandboxRequested, alive: list[str]) -> tuple[Placement, bool]:
        """Place once: (placement, new). Raises NoCapacity when nothing fits now."""
        if req.pin_host_id:  # a fork runs where its snapshot is
            alive = [x for x in alive if x == req.pin_host_id]

        def attempt() -> tuple[Placement, bool]:  # races: another scheduler, that host
            existing = self.placement(req.sandbox_id)
            if existing is not None:
                return existing, False
            chosen = self._choose(alive, req.spec.vcpus, req.spec.memory_mib)
            if chosen is None:
                raise NoCapacity(f"no host fits {req.spec.vcpus} vCPU / {req.spec.memory_mib} MiB")
            chosen.allocate(req.sandbox_id, req.org_id, req.spec.vcpus, req.spec.memory_mib)
            common = dict(op_id=req.op_id, org_id=req.org_id, sandbox_id=req.sandbox_id,
                          traceparent=req.traceparent)
            p = Placement(req.sandbox_id, req.org_id, chosen.host_id,
                          envelope_doc(SandboxScheduled(host_id=chosen.host_id, **common)),
                          req.spec.model_dump(mode="json"), req.secret_env)
            p.command(envelope_doc(StartSandbox(host_id=chosen.host_id, spec=req.spec,
                                         secret_env=req.secret_env, **common)))
            self._save(p, chosen)
            return p, True
        return self.retry_on_conflict(attempt, NoCapacity("hosts kept changing; will retry"))

    def fail(self, req: SandboxRequested, code: str, message: str) -> Placement:
        failed = SandboxFailed(op_id=req.op_id, org_id=req.org_id, sandbox_id=req.sandbox_id,
                               traceparent=req.traceparent,
                               failure=Failure(code=code, message=message))
        try:
            self._save(Placement(req.sandbox_id, req.org_id, None, envelope_doc(failed)))
        except IntegrityError:
            pass  # decided already (placed or failed by another instance)
        placement = self.placement(req.sandbox_id)
        assert placement is not None
        return placement

    # --- user intents routed to hosts -------------------------------------
    def route_intent(self, msg: SandboxEvent) -> None:
        """User intents become commands on the owning host's subject, once each."""
        cls = INTENT_COMMANDS[msg.type]
        common = dict(op_id=msg.op_id, org_id=msg.org_id, sandbox_id=msg.sandbox_id,
                      traceparent=msg.traceparent)

        def attempt() -> None:
            p = self.placement(msg.sandbox_id)
            if p is None:
                if cls is DestroySandbox:  # never placed: nothing runs anywhere
                    self._save(Placement(msg.sandbox_id, msg.org_id, None,
                                         envelope_doc(SandboxDestroyed(**common))))
                return
            if p.status in ("destroyed", "cancelled") or msg.event_id in p.handled:
                return
            host = self.host(p.host_id) if p.host_id else None
            to_save: list[Aggregate] = [p]
            if host is None or host.status == "lost":
                if cls is not DestroySandbox:
                    return
                # its allocation stays unknown: the host's inventory settles it
                p.end(envelope_doc(SandboxDestroyed(host_id=p.host_id, **common)),
                      status="destroyed")
            elif cls is StartSandbox:
                spec = SandboxSpec.model_validate(p.spec)
                if msg.sandbox_id not in host.allocations:
                    host.allocate(msg.sandbox_id, msg.org_id, spec.vcpus, spec.memory_mib)
                    to_save.append(host)
                p.command(envelope_doc(StartSandbox(host_id=p.host_id, spec=spec, restart=True,
                                             secret_env=p.secret_env,
                                             **common)), msg.event_id)
            else:
                p.command(envelope_doc(cls(host_id=p.host_id, **common)), msg.event_id)
            self._save(*to_save)
        self.retry_on_conflict(attempt)

    def route_snapshot(self, msg: SnapshotEvent) -> None:
        """TakeSnapshot to the sandbox's host; DeleteSnapshot to where it was taken."""
        ids = dict(op_id=msg.op_id, org_id=msg.org_id, sandbox_id=msg.sandbox_id,
                   snapshot_id=msg.snapshot_id, traceparent=msg.traceparent)

        def attempt() -> None:
            p = self.placement(msg.sandbox_id)
            if p is None or msg.event_id in p.handled:
                return
            if msg.type == "SnapshotRequested":
                host = self.host(p.host_id) if p.host_id and p.active else None
                if host is None or host.status == "lost":
                    p.command(envelope_doc(SnapshotFailed(host_id=p.host_id, failure=Failure(
                        code="not_running", message="the sandbox's host is gone"), **ids)),
                        msg.event_id)
                else:
                    p.command(envelope_doc(TakeSnapshot(host_id=p.host_id, **ids)), msg.event_id)
            else:
                where = getattr(msg, "host_id", None)
                host = self.host(where) if where else None
                if host is None or host.status == "lost":
                    p.command(envelope_doc(SnapshotDeleted(host_id=where, **ids)), msg.event_id)
                else:
                    p.command(envelope_doc(DeleteSnapshot(host_id=where, **ids)), msg.event_id)
            self._save(p)
        self.retry_on_conflict(attempt)

    def host_reported(self, msg: SandboxEvent) -> None:
        """A host stopped, destroyed or failed a sandbox: free its capacity.
        Raises WrongSource for a report from a host that does not hold it."""
        def attempt() -> None:
            p = self.placement(msg.sandbox_id)
            if p is None or not p.host_id:
                return
            if msg.via_host is not None and msg.via_host != p.host_id:
                raise WrongSource(f"{msg.type} from {msg.via_host}; {p.host_id} holds it")
            host = self.host(p.host_id)
            to_save: list[Aggregate] = []
            if host is not None and host.release(msg.sandbox_id):
                to_save.append(host)
            if msg.type == "SandboxDestroyed" and p.status != "destroyed":
                p.end(None, status="destroyed")
                to_save.append(p)
            if to_save:
                self._save(*to_save)
        self.retry_on_conflict(attempt)

    # --- hosts ------------------------------------------------------------
    def register(self, msg: HostRegistered | HostHeartbeat) -> bool:
        """A host's registration creates or refreshes it; a heartbeat refreshes
        a registered host only. False when the host is unknown or revoked (or
        nothing changed): a heartbeat alone never makes a host."""
        capacity = msg.capacity.model_dump()
        hostname = getattr(msg, "hostname", None)

        def attempt() -> bool:
            h = self.host(msg.host_id)
            if h is None:
                if not isinstance(msg, HostRegistered):
                    return False
                h = Host(msg.host_id, hostname or msg.host_id, capacity, msg.accel)
            elif h.status == "revoked":
                return False
            else:
                interval = getattr(msg, "interval_s", None)
                changed = h.capacity != capacity or h.accel != msg.accel or bool(
                    hostname and hostname != h.hostname) or bool(
                    interval and interval != h.heartbeat_interval)
                if not changed and h.status != "lost":
                    return False
                if changed:
                    h.update(hostname or h.hostname, capacity, msg.accel, interval)
                if h.status == "lost":
                    h.mark_back()
            self._save(h)
            return True
        try:
            return self.retry_on_conflict(attempt)
        except StoreConflict:
            log.warning("host %s kept changing; its next heartbeat registers it", msg.host_id)
            return False

    def accepts_heartbeats(self, host_id: str) -> bool:
        """Registered and not revoked: its heartbeats count for liveness."""
        h = self.host(host_id)
        return h is not None and h.status != "revoked"

    def revoke(self, msg: HostRevoked) -> list[str]:
        """An administrator revoked the host: never placed on again, its
        heartbeats ignored, its sandboxes lost (exactly once)."""
        def attempt() -> list[str]:
            h = self.host(msg.host_id)
            if h is None or h.status == "revoked":
                return []
            records = self._lost_records(h, msg.op_id, msg.event_id,
                                         f"host {msg.host_id} was revoked: {msg.reason}")
            sandboxes = list(h.allocations)
            h.revoke(msg.reason)
            self._save(h, *records)
            return sandboxes
        return self.retry_on_conflict(attempt)

    def _lost_records(self, h: Host, op_id: str, cause_id: str,
                      reason: str) -> list[FactRecord]:
        """A SandboxLost per sandbox; an ImageBuildFailed per build it ran
        (none for those already lost and not yet settled)."""
        out = []
        already = set(h.unknown_ids)
        for sid, a in h.allocations.items():
            if sid in already:
                continue
            ids = dict(event_id=str(uuid.uuid5(LOST_NS, f"{cause_id}/{sid}")), op_id=op_id,
                       org_id=a["org_id"], host_id=h.host_id)
            out.append(FactRecord(envelope_doc(
                ImageBuildFailed(image_id=sid, failure=Failure(code="host_lost",
                                                               message=reason[:500]), **ids)
                if a.get("kind") == "build" else
                SandboxLost(sandbox_id=sid, reason=reason[:500], **ids))))
        return out

    def mark_lost(self, host_id: str, timeout_s: float, op_id: str) -> list[str]:
        """Record HostLost and a SandboxLost per allocation; exactly once."""
        def attempt() -> list[str]:
            h = self.host(host_id)
            if h is None or h.status != "ready":
                return []
            lost = HostLost(op_id=op_id, host_id=host_id, last_seen=utc_text(datetime.now(UTC)),
                            timeout_s=timeout_s)
            records = self._lost_records(h, op_id, lost.event_id,
                                         f"host {host_id} missed heartbeats for {timeout_s:g}s")
            sandboxes = [str(r.sandbox_id) for r in records]
            h.mark_lost(envelope_doc(lost))
            self._save(h, *records)
            return sandboxes
        try:
            return self.retry_on_conflict(attempt)
        except StoreConflict:
            log.error("host %s kept changing; not marked lost", host_id)
            return []

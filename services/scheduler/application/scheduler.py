"""Scheduler use cases over its own event store (sync: call via to_thread)."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

from eventsourcing.persistence import IntegrityError

from common.eventstore import StoreApp
from contracts.commands import (DestroySandbox, PauseSandbox, ResumeSandbox, StartSandbox,
                               StopSandbox)
from contracts.snapshot import (DeleteSnapshot, SnapshotDeleted, SnapshotEvent, SnapshotFailed,
                                TakeSnapshot)
from contracts.host import HostHeartbeat, HostLost, HostRegistered
from contracts.sandbox import (Failure, SandboxDestroyed, SandboxEvent, SandboxFailed,
                               SandboxLost, SandboxRequested, SandboxScheduled, SandboxSpec)

from ..domain.host import Host, SandboxLostRecord, host_uuid
from ..domain.placement import Placement, placement_uuid
from ..domain.policy import choose_host

RETRIES = 8
LOST_NS = uuid.UUID("4d2c8e6a-1b3f-4a5c-9d7e-0f1a2b3c4d5e")


def _dump(msg) -> dict:  # noqa: ANN001
    return msg.model_dump(mode="json")


class NoCapacity(Exception):
    pass


class Scheduler(StoreApp):
    name = "scheduler"
    # a host gains events with every placement, for ever: load from a snapshot
    snapshotting_intervals = {Host: 100}


    def host(self, host_id: str) -> Host | None:
        return self._get(host_uuid(host_id))

    def placement(self, sandbox_id: str) -> Placement | None:
        return self._get(placement_uuid(sandbox_id))

    # --- placement -------------------------------------------------------
    def place(self, req: SandboxRequested, alive: list[str]) -> tuple[Placement, bool]:
        """Place once: (placement, new). Raises NoCapacity when nothing fits now."""
        for _ in range(RETRIES):
            existing = self.placement(req.sandbox_id)
            if existing is not None:
                return existing, False
            if req.pin_host_id:  # a fork runs where its snapshot is
                alive = [x for x in alive if x == req.pin_host_id]
            hosts = [h for h in (self.host(x) for x in alive) if h is not None]
            chosen = choose_host(hosts, req.spec.vcpus, req.spec.memory_mib)
            if chosen is None:
                raise NoCapacity(f"no host fits {req.spec.vcpus} vCPU / {req.spec.memory_mib} MiB")
            chosen.allocate(req.sandbox_id, req.org_id, req.spec.vcpus, req.spec.memory_mib)
            common = dict(op_id=req.op_id, org_id=req.org_id, sandbox_id=req.sandbox_id,
                          traceparent=req.traceparent)
            p = Placement(req.sandbox_id, req.org_id, chosen.host_id,
                          _dump(SandboxScheduled(host_id=chosen.host_id, **common)),
                          req.spec.model_dump(mode="json"))
            p.command(_dump(StartSandbox(host_id=chosen.host_id, spec=req.spec, **common)))
            try:
                self._save(p, chosen)
                return p, True
            except IntegrityError:
                continue  # another scheduler placed it, or changed that host: look again
        raise NoCapacity("hosts kept changing; will retry")

    def fail(self, req: SandboxRequested, code: str, message: str) -> Placement:
        failed = SandboxFailed(op_id=req.op_id, org_id=req.org_id, sandbox_id=req.sandbox_id,
                               traceparent=req.traceparent,
                               failure=Failure(code=code, message=message))
        try:
            self._save(Placement(req.sandbox_id, req.org_id, None, _dump(failed)))
        except IntegrityError:
            pass
        return self.placement(req.sandbox_id)

    # --- user intents routed to hosts -------------------------------------
    def route_intent(self, msg: SandboxEvent) -> None:
        """User intents become commands on the owning host's subject, once each."""
        commands = {"SandboxDestroyRequested": DestroySandbox, "SandboxStopRequested": StopSandbox,
                    "SandboxPauseRequested": PauseSandbox, "SandboxResumeRequested": ResumeSandbox,
                    "SandboxStartRequested": StartSandbox}
        cls = commands[msg.type]
        for _ in range(RETRIES):
            p = self.placement(msg.sandbox_id)
            common = dict(op_id=msg.op_id, org_id=msg.org_id, sandbox_id=msg.sandbox_id,
                          traceparent=msg.traceparent)
            if p is None:
                if cls is not DestroySandbox:
                    return  # never placed: nothing runs anywhere
                p = Placement(msg.sandbox_id, msg.org_id, None,
                              _dump(SandboxDestroyed(**common)))
                try:
                    self._save(p)
                    return
                except IntegrityError:
                    continue
            if p.status in ("destroyed", "cancelled") or msg.event_id in p.handled:
                return
            host = self.host(p.host_id) if p.host_id else None
            to_save: list = [p]
            if host is None or host.status == "lost":
                if cls is not DestroySandbox:
                    return
                p.end(_dump(SandboxDestroyed(host_id=p.host_id, **common)), status="destroyed")
                if host is not None and host.release(msg.sandbox_id):
                    to_save.append(host)
            elif cls is StartSandbox:
                spec = SandboxSpec.model_validate(p.spec)
                if msg.sandbox_id not in host.allocations:
                    host.allocate(msg.sandbox_id, msg.org_id, spec.vcpus, spec.memory_mib)
                    to_save.append(host)
                p.command(_dump(StartSandbox(host_id=p.host_id, spec=spec, restart=True,
                                             **common)), msg.event_id)
            else:
                p.command(_dump(cls(host_id=p.host_id, **common)), msg.event_id)
            try:
                self._save(*to_save)
                return
            except IntegrityError:
                continue

    def route_snapshot(self, msg: SnapshotEvent) -> None:
        """TakeSnapshot to the sandbox's host; DeleteSnapshot to where it was taken."""
        ids = dict(op_id=msg.op_id, org_id=msg.org_id, sandbox_id=msg.sandbox_id,
                   snapshot_id=msg.snapshot_id, traceparent=msg.traceparent)
        for _ in range(RETRIES):
            p = self.placement(msg.sandbox_id)
            if p is None or msg.event_id in p.handled:
                return
            if msg.type == "SnapshotRequested":
                host = self.host(p.host_id) if p.host_id and p.active else None
                if host is None or host.status == "lost":
                    p.command(_dump(SnapshotFailed(host_id=p.host_id, failure=Failure(
                        code="not_running", message="the sandbox's host is gone"), **ids)),
                        msg.event_id)
                else:
                    p.command(_dump(TakeSnapshot(host_id=p.host_id, **ids)), msg.event_id)
            else:
                where = getattr(msg, "host_id", None)
                host = self.host(where) if where else None
                if host is None or host.status == "lost":
                    p.command(_dump(SnapshotDeleted(host_id=where, **ids)), msg.event_id)
                else:
                    p.command(_dump(DeleteSnapshot(host_id=where, **ids)), msg.event_id)
            try:
                self._save(p)
                return
            except IntegrityError:
                continue

    def host_reported(self, msg: SandboxEvent) -> None:
        """A host stopped, destroyed or failed a sandbox: free its capacity."""
        for _ in range(RETRIES):
            p = self.placement(msg.sandbox_id)
            if p is None or not p.host_id:
                return
            host = self.host(p.host_id)
            to_save = []
            if host is not None and host.release(msg.sandbox_id):
                to_save.append(host)
            if msg.type == "SandboxDestroyed" and p.status != "destroyed":
                p.end(None, status="destroyed")
                to_save.append(p)
            if not to_save:
                return
            try:
                self._save(*to_save)
                return
            except IntegrityError:
                continue

    # --- hosts ------------------------------------------------------------
    def register(self, msg: HostRegistered | HostHeartbeat) -> bool:
        """Create or refresh a host from its registration or heartbeat."""
        capacity = msg.capacity.model_dump()
        hostname = getattr(msg, "hostname", None)
        for _ in range(RETRIES):
            h = self.host(msg.host_id)
            if h is None:
                h = Host(msg.host_id, hostname or msg.host_id, capacity, msg.accel)
            else:
                changed = h.capacity != capacity or h.accel != msg.accel or bool(
                    hostname and hostname != h.hostname)
                if not changed and h.status != "lost":
                    return False
                if changed:
                    h.update(hostname or h.hostname, capacity, msg.accel)
                if h.status == "lost":
                    h.mark_back()
            try:
                self._save(h)
                return True
            except IntegrityError:
                continue
        return False

    def mark_lost(self, host_id: str, timeout_s: float, op_id: str) -> list[str]:
        """Record HostLost and a SandboxLost per allocation; exactly once."""
        for _ in range(RETRIES):
            h = self.host(host_id)
            if h is None or h.status != "ready":
                return []
            now = datetime.now(timezone.utc)
            lost = HostLost(op_id=op_id, host_id=host_id, last_seen=now.isoformat(),
                            timeout_s=timeout_s)
            records = [SandboxLostRecord(_dump(SandboxLost(
                event_id=str(uuid.uuid5(LOST_NS, f"{lost.event_id}/{sid}")),
                op_id=op_id, org_id=a["org_id"], sandbox_id=sid, host_id=host_id,
                reason=f"host {host_id} missed heartbeats for {timeout_s:g}s")))
                for sid, a in h.allocations.items()]
            sandboxes = list(h.allocations)
            h.mark_lost(_dump(lost))
            try:
                self._save(h, *records)
                return sandboxes
            except IntegrityError:
                continue
        return []

"""Snapshot use cases on the gateway's store (mixed into SandboxLedger)."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from eventsourcing.domain import Aggregate

from common.eventstore import StoreApp
from contracts.sandbox import SandboxSpec
from contracts.snapshot import SnapshotDeleteRequested, SnapshotEvent, SnapshotRequested

from ..domain.quota import MIB, Limits, OrgSnapshots, org_snapshots_uuid
from ..domain.sandbox import Sandbox
from ..domain.snapshot import Snapshot
from .errors import Conflict, NotFound, TooMany, Unprocessable

SNAPSHOT_FACTS = frozenset({"SnapshotCreated", "SnapshotFailed", "SnapshotDeleted"})


def _uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except (ValueError, AttributeError, TypeError):
        return None


class SnapshotCases(StoreApp):
    """Snapshot use cases, mixed into the gateway's store."""

    def find(self, sandbox_id: str, org_id: str | None) -> Sandbox:
        raise NotImplementedError  # the ledger's

    def find_snapshot(self, snapshot_id: str, org_id: str | None) -> Snapshot:
        uid = _uuid(snapshot_id)
        snap = self._get(uid) if uid else None
        if not isinstance(snap, Snapshot) or (org_id is not None and snap.org_id != org_id):
            raise NotFound("no such snapshot")
        return snap

    def request_snapshot(self, sandbox_id: str, org_id: str, name: str, op_id: str,
                         traceparent: str | None, limits: Limits, ttl_s: int,
                         now: datetime) -> Snapshot:
        """A pending snapshot, within the org's count, bytes and in-progress
        quotas; it is deleted `ttl_s` after `now` unless deleted before."""
        snapshot_id = str(uuid.uuid4())

        def attempt() -> Snapshot:
            sb = self.find(sandbox_id, org_id)
            if sb.state != "running":
                raise Conflict(f"snapshots are taken of running sandboxes; this one is {sb.state}")
            quota = self._get(org_snapshots_uuid(org_id)) or OrgSnapshots(org_id)
            estimate = int(sb.spec.get("memory_mib", 256)) * MIB
            refusal = quota.refusal(limits, estimate)
            if refusal:
                raise TooMany(refusal, 30)
            msg = SnapshotRequested(op_id=op_id, org_id=org_id, sandbox_id=sandbox_id,
                                    snapshot_id=snapshot_id, name=name, traceparent=traceparent,
                                    expires_at=now + timedelta(seconds=ttl_s))
            snap = Snapshot(msg.model_dump(mode="json"))
            quota.reserve(snapshot_id, estimate)
            self._save(snap, quota)
            return snap
        return self.retry_on_conflict(attempt, Conflict("snapshots kept changing; retry"))

    def request_snapshot_delete(self, snapshot_id: str, org_id: str | None, op_id: str,
                                traceparent: str | None) -> Snapshot:
        """`org_id` None: the control plane's own delete (expiry)."""
        def attempt() -> Snapshot:
            snap = self.find_snapshot(snapshot_id, org_id)
            if snap.state in ("deleting", "deleted"):
                return snap
            snap.record_fact(SnapshotDeleteRequested(
                op_id=op_id, org_id=snap.org_id, sandbox_id=snap.sandbox_id,
                snapshot_id=snapshot_id, host_id=snap.host_id,
                traceparent=traceparent).model_dump(mode="json"))
            self._save(snap)
            return snap
        return self.retry_on_conflict(attempt, Conflict("snapshot kept changing; retry"))

    def expire_snapshot(self, snapshot_id: str, now: datetime) -> bool:
        """Delete a ready snapshot whose lifetime is over; idempotent."""
        snap = self.find_snapshot(snapshot_id, None)
        if snap.state != "ready" or not snap.expired(now):
            return False
        self.request_snapshot_delete(snapshot_id, None,
                                     "op_snapttl_" + snapshot_id.replace("-", "")[:16], None)
        return True

    def fork_source(self, spec: SandboxSpec, org_id: str) -> str | None:
        """The host a fork must run on; validates the snapshot is the caller's."""
        if not spec.snapshot_id:
            return None
        snap = self.find_snapshot(spec.snapshot_id, org_id)
        if snap.state != "ready":
            raise Conflict(f"snapshot is {snap.state}")
        shape = snap.shape
        if (spec.vcpus, spec.memory_mib, spec.image) != (shape["vcpus"], shape["memory_mib"],
                                                          shape["image"]):
            raise Unprocessable(f"a fork has its snapshot's shape: image {shape['image']}, "
                                f"{shape['vcpus']} vCPU, {shape['memory_mib']} MiB")
        return snap.host_id

    def ingest_snapshot_fact(self, msg: SnapshotEvent) -> bool:
        def attempt() -> bool:
            snap = self.find_snapshot(msg.snapshot_id, None)
            if snap.org_id != msg.org_id:
                raise ValueError("fact's org does not own the snapshot")
            if not snap.record_fact(msg.model_dump(mode="json"), own=False):
                return False
            pending: list[Aggregate] = [snap]
            quota = self._get(org_snapshots_uuid(snap.org_id))
            if isinstance(quota, OrgSnapshots):
                changed = (quota.size(msg.snapshot_id, snap.shape["size_bytes"])
                           if snap.state == "ready" else
                           quota.release(msg.snapshot_id)
                           if snap.state in ("failed", "deleted") else False)
                if changed:
                    pending.append(quota)
            self._save(*pending)
            return True
        return self.retry_on_conflict(attempt, Conflict("snapshot kept changing while ingesting"))

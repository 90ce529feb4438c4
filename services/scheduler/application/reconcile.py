"""Anti-entropy (mixed into Scheduler): a host's inventory against what the
scheduler believes runs there. Every correction is an event.

- In the inventory, recorded lost: adopted back (`SandboxRecovered`, its
  capacity counted again) or, under the "destroy" policy, destroyed.
- In the inventory, ended here (destroyed, failed) or never placed there:
  `DestroySandbox` to the host.
- In the inventory, placed there but not counted: counted again.
- Held on a host that was lost and absent from its inventory: released (and
  adopted should it turn up later).
- Held and absent from the inventory of a host that was not lost:
  `SandboxLost` ("its host does not run it") and released.

A host's inventory and the facts it publishes travel separately, so a
discrepancy that a fact in flight may explain (every case but adopting a
sandbox recorded lost) is acted on only when a later inventory, at least
`confirm_s` after the first, shows it again; and absence only counts in an
inventory taken with no command pending for the host.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from eventsourcing.domain import Aggregate

from common.eventstore import StoreApp
from common.timefmt import parse_time, utc_text
from contracts.commands import DestroySandbox
from contracts.host import HostInventory, HostReconciled, InventoryItem
from contracts.sandbox import SandboxLost, SandboxRecovered, SandboxSpec

from ..domain.host import FactRecord, Host
from ..domain.placement import Placement
from .builds import envelope_doc

log = logging.getLogger("corral.scheduler")
RECONCILE_NS = uuid.UUID("1c9e5a7b-3d2f-4b6a-8e0c-9f1d2a3b4c5d")
CAP = 1000


class ReconcileCases(StoreApp):
    lost_policy = "adopt"  # what a sandbox recorded lost becomes when its host has it
    confirm_s = 5.0  # a suspected discrepancy must still be there this much later
    missing_grace_s = 60.0  # a placement younger than this may not have reached its host
    min_gap_s = 1.0  # a host's inventories closer together than this are skipped
    # (host, sandbox, kind) -> when first suspected, in this process only
    _suspects: dict[tuple[str, str, str], float]
    _suspects_lock: threading.Lock
    _last_inventory: dict[str, float]  # host -> when its last inventory was taken up

    def placement(self, sandbox_id: str) -> Placement | None: ...
    def host(self, host_id: str) -> Host | None: ...

    def reconcile(self, inv: HostInventory) -> HostReconciled | None:
        """Correct this scheduler's view of `inv.host_id`; None when it agrees
        (or the host is not ready: lost hosts are settled once back), or when
        the host sent another inventory less than `min_gap_s` ago (a host
        cannot make the scheduler work harder by sending more)."""
        now = time.monotonic()
        with self._suspects_lock:
            last = self._last_inventory.get(inv.host_id)
            if last is not None and now - last < self.min_gap_s:
                return None
            self._last_inventory[inv.host_id] = now

        def attempt() -> HostReconciled | None:
            return _Pass(self, inv).run()
        return self.retry_on_conflict(attempt)

    def _suspect(self, key: tuple[str, str, str], now: float) -> bool:
        """True once `key` was already suspected at least `confirm_s` ago."""
        with self._suspects_lock:
            first = self._suspects.setdefault(key, now)
        return now - first >= self.confirm_s

    def _clear_suspects(self, host_id: str, keep: set[tuple[str, str, str]]) -> None:
        with self._suspects_lock:
            for key in [k for k in self._suspects if k[0] == host_id and k not in keep]:
                del self._suspects[key]


class _Pass:
    """One reconciliation of one inventory (one attempt: a store conflict
    starts a new pass)."""

    def __init__(self, app: ReconcileCases, inv: HostInventory):
        self.app, self.inv = app, inv
        self.now = time.monotonic()
        self.seen: set[tuple[str, str, str]] = set()
        self.out: dict[str, list[str]] = {k: [] for k in (
            "adopted", "destroyed", "lost", "released", "recounted")}
        self.dirty: dict[int, Aggregate] = {}
        self.op_id = f"op_reconcile_{inv.host_id}"[:64]

    def _id(self, sid: str, what: str) -> str:
        return str(uuid.uuid5(RECONCILE_NS, f"{self.inv.event_id}/{sid}/{what}"))

    def _confirmed(self, sid: str, kind: str) -> bool:
        key = (self.inv.host_id, sid, kind)
        self.seen.add(key)
        return self.app._suspect(key, self.now)

    def _touch(self, *aggs: Aggregate) -> None:
        for a in aggs:
            self.dirty[id(a)] = a

    def run(self) -> HostReconciled | None:
        h = self.app.host(self.inv.host_id)
        if h is None or h.status != "ready":
            return None
        self.h = h
        reported = {i.sandbox_id: i for i in self.inv.sandboxes}
        unknown = set(h.unknown_ids)
        for sid, item in reported.items():
            if sid in h.allocations and sid not in unknown:
                continue
            self._reported(sid, item, sid in unknown)
        for sid, alloc in list(h.allocations.items()):
            if sid not in reported:
                self._absent(sid, alloc, sid in unknown)
        self.app._clear_suspects(h.host_id, self.seen)
        if not any(self.out.values()):
            return None
        summary = HostReconciled(
            op_id=self.op_id, host_id=h.host_id, inventory_id=self.inv.event_id,
            counts={k: len(v) for k, v in self.out.items()},
            **{k: v[:CAP] for k, v in self.out.items() if k != "recounted"})
        h.reconciled(envelope_doc(summary))
        self._touch(h)
        self.app._save(*self.dirty.values())
        log.warning("reconciled host against its inventory",
                    extra={"host_id": h.host_id, **summary.counts})
        return summary

    def _reported(self, sid: str, item: InventoryItem, unknown: bool) -> None:
        """The host runs `sid`, and the scheduler does not count it as its own."""
        h = self.h
        p = self.app.placement(sid)
        if p is None or p.host_id != h.host_id:  # never placed there
            if self._confirmed(sid, "stray"):
                self._destroy(sid, item.org_id, None)
            return
        if unknown:
            h.settle(sid, keep=True)  # held until it is adopted or reported destroyed
            self._touch(h)
        lost_at = getattr(h, "lost_at", None) if unknown else p.lost_since
        if p.active and (unknown or lost_at):
            if self.app.lost_policy == "adopt":
                self._adopt(p, item, lost_at)
            else:
                p.end(None, status="destroyed")
                self._destroy(sid, item.org_id, p)
            return
        if p.active:  # running where it was placed, but not counted
            if self._confirmed(sid, "uncounted"):
                spec = SandboxSpec.model_validate(p.spec)
                h.allocate(sid, p.org_id, spec.vcpus, spec.memory_mib)
                self._touch(h)
                self.out["recounted"].append(sid)
        elif unknown or self._confirmed(sid, "ended"):  # destroyed or failed here
            self._destroy(sid, item.org_id, p)

    def _adopt(self, p: Placement, item: InventoryItem, lost_at: str | None) -> None:
        h = self.h
        spec = SandboxSpec.model_validate(p.spec)
        if p.sandbox_id not in h.allocations:
            h.allocate(p.sandbox_id, p.org_id, spec.vcpus, spec.memory_mib)
            self._touch(h)
        p.recovered(envelope_doc(SandboxRecovered(
            event_id=self._id(p.sandbox_id, "recovered"), op_id=self.op_id, org_id=p.org_id,
            sandbox_id=p.sandbox_id, host_id=h.host_id, state=item.state,
            lost_at=parse_time(lost_at) if lost_at else datetime.now(UTC),
            vcpus=spec.vcpus, memory_mib=spec.memory_mib)))
        self._touch(p)
        self.out["adopted"].append(p.sandbox_id)

    def _destroy(self, sid: str, org_id: str, p: Placement | None) -> None:
        cmd = envelope_doc(DestroySandbox(event_id=self._id(sid, "destroy"), op_id=self.op_id,
                                          host_id=self.h.host_id, org_id=org_id,
                                          sandbox_id=sid))
        if p is None:
            self._touch(FactRecord(cmd))
        else:
            p.command(cmd)
            self._touch(p)
        self.out["destroyed"].append(sid)

    def _gone(self, sid: str, p: Placement | None) -> None:
        """An unknown allocation its returning host does not hold: released
        once confirmed; should the sandbox turn up after all, it is adopted."""
        if not self._confirmed(sid, "gone"):
            return
        h = self.h
        h.settle(sid, keep=False)
        self._touch(h)
        if p is not None and p.active:
            p.mark_lost(getattr(h, "lost_at", None) or utc_text(datetime.now(UTC)))
            self._touch(p)
        self.out["released"].append(sid)

    def _absent(self, sid: str, alloc: dict[str, Any], unknown: bool) -> None:
        """Counted on the host, and the host does not run it. Only an inventory
        with no command pending says so (a start may still be queued), and
        only when a later one, `confirm_s` on, says it again."""
        h = self.h
        if self.inv.commands_pending != 0:
            return
        if alloc.get("kind") == "build":
            if unknown and sid not in self.inv.builds:
                self._gone(sid, None)
            return  # a build known here ends with its own fact (or its timeout)
        p = self.app.placement(sid)
        if unknown:  # lost with its host, and really gone: SandboxLost said so
            self._gone(sid, p)
            return
        young = p is not None and p.modified_on > datetime.now(UTC) - timedelta(
            seconds=self.app.missing_grace_s)
        if young or not self._confirmed(sid, "missing"):
            return
        h.release(sid)
        self._touch(h)
        if p is None or not p.active:
            self.out["released"].append(sid)
            return
        lost = SandboxLost(event_id=self._id(sid, "lost"), op_id=self.op_id, org_id=p.org_id,
                           sandbox_id=sid, host_id=h.host_id, reason="its host does not run it")
        p.mark_lost(utc_text(lost.occurred_at), envelope_doc(lost))
        self._touch(p)
        self.out["lost"].append(sid)

"""The spend guard's use cases: an org's monthly vCPU-seconds cap, its status
for the gateway's creates, and the crossings of 80% and 100% as events.
Sync (store and SQL): call via asyncio.to_thread."""
from __future__ import annotations

import functools

from contracts import billing as bc
from contracts.usage import SpendThresholdCrossed

from ..adapters.usage_index import UsageIndex
from ..domain.spend import SpendCap, crossed_levels, crossing_id, level, month_of, spend_id
from .metering import Metering


class Spend:
    def __init__(self, store: Metering, index: UsageIndex) -> None:
        self.store, self.index = store, index

    def _cap(self, org_id: str) -> SpendCap | None:
        return self.store._get(spend_id(org_id))

    def status(self, org_id: str) -> bc.SpendStatus:
        cap = self._cap(org_id)
        month, start = month_of(self.store.clock())
        used = self.index.vcpu_seconds_since(org_id, start)
        limit = cap.vcpu_seconds if cap else None
        lvl, percent = level(used, limit)
        return bc.SpendStatus(org_id=org_id, month=month, used_vcpu_seconds=round(used, 3),
                              cap_vcpu_seconds=limit, percent=percent, level=lvl)

    def set_cap(self, org_id: str, vcpu_seconds: float | None) -> bc.SpendStatus:
        def attempt() -> None:
            cap = self._cap(org_id)
            if cap is None:
                cap = SpendCap(org_id, vcpu_seconds)
            elif not cap.change(vcpu_seconds):
                return
            self.store._save(cap)
        self.store.retry_on_conflict(attempt)
        self.note([org_id])
        return self.status(org_id)

    def note(self, org_ids: list[str]) -> int:
        """Record (and so publish) each org's crossings not yet recorded this month."""
        made = 0
        for org_id in org_ids:
            st = self.status(org_id)
            for percent in crossed_levels(st.level):
                made += self.store.retry_on_conflict(
                    functools.partial(self._cross, org_id, percent, st))
        return made

    def _cross(self, org_id: str, percent: int, st: bc.SpendStatus) -> int:
        cap = self._cap(org_id)
        if cap is None or cap.vcpu_seconds is None:
            return 0
        fact = SpendThresholdCrossed(
            event_id=crossing_id(org_id, st.month, percent), op_id="spend-guard",
            org_id=org_id, month=st.month, percent=percent,
            used_vcpu_seconds=st.used_vcpu_seconds, cap_vcpu_seconds=cap.vcpu_seconds)
        if not cap.cross(st.month, percent, fact.model_dump(mode="json")):
            return 0
        self.store._save(cap)
        return 1

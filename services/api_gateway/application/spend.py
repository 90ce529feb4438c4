"""The spend guard at the door: an org's month-to-date vCPU-seconds against its
monthly cap (billing answers), cached briefly per org. At 80% creates carry a
warning; at 100% they are refused (402). Running sandboxes are never touched.
If billing does not answer, creates go ahead (logged): metering catches up."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from contracts.billing import SpendStatus

from .errors import UseCaseError

log = logging.getLogger("corral.gateway.spend")
Fetch = Callable[[str], Awaitable[SpendStatus]]


class SpendCapReached(UseCaseError):
    status, code = 402, "spend_cap_reached"


class SpendGate:
    def __init__(self, fetch: Fetch, ttl_s: float = 5.0, timeout_s: float = 2.0) -> None:
        self.fetch, self.ttl_s, self.timeout_s = fetch, ttl_s, timeout_s
        self._cache: dict[str, tuple[float, SpendStatus | None]] = {}

    async def status(self, org_id: str) -> SpendStatus | None:
        hit = self._cache.get(org_id)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        try:
            st: SpendStatus | None = await asyncio.wait_for(self.fetch(org_id), self.timeout_s)
        except Exception as e:  # noqa: BLE001 - billing away: creates go on
            log.warning("spend status of %s unknown: %r", org_id, e)
            st = hit[1] if hit else None  # the last known, for one more TTL
        self._cache[org_id] = (time.monotonic() + self.ttl_s, st)
        if len(self._cache) > 10_000:  # bounded: drop the oldest entries
            for key in list(self._cache)[:1000]:
                self._cache.pop(key, None)
        return st

    def forget(self, org_id: str) -> None:
        self._cache.pop(org_id, None)

    async def admit(self, org_id: str) -> str | None:
        """Raises SpendCapReached at 100%; the warning text at 80% or more."""
        st = await self.status(org_id)
        if st is None or st.level in ("none", "ok"):
            return None
        used = f"{st.used_vcpu_seconds:.0f} of {st.cap_vcpu_seconds:.0f} vCPU-seconds"
        if st.level == "over":
            raise SpendCapReached(f"the org's monthly cap is reached ({used} in {st.month}); "
                                  "running sandboxes keep running")
        return f"{st.percent:.0f}% of the monthly vCPU-seconds cap used ({used})"

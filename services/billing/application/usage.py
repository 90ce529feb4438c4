"""Usage line items of one org, answered from the projection after catching it
up with the store, so a reply holds every item recorded before the request,
whichever instance recorded it."""
from __future__ import annotations

import asyncio
import logging

from contracts import rpc

from ..adapters.usage_index import UsageIndex
from .metering import Metering
from .spend import Spend

log = logging.getLogger("corral.billing")


class UsageQueries:
    def __init__(self, index: UsageIndex, metering: Metering, spend: Spend) -> None:
        self.index = index
        self.metering = metering
        self.spend = spend

    async def page(self, q: rpc.UsageQuery) -> rpc.UsagePage:
        """Raises ValueError for a cursor that is not ours."""
        try:
            await asyncio.to_thread(self.index.catch_up_all, self.metering.recorder)
        except Exception as e:  # noqa: BLE001 - another instance is projecting: answer anyway
            log.warning("usage projection catch-up failed: %r", e)
        found, nxt = await asyncio.to_thread(self.index.page, q.org_id, q.from_, q.to, q.limit,
                                             q.cursor)
        return rpc.UsagePage(items=[rpc.UsageItem(**i) for i in found], next_cursor=nxt)

    async def project(self, stop: asyncio.Event, every_s: float = 1.0) -> None:
        """Keep the projection current between queries (queries catch up too),
        and note the spend-cap crossings of orgs with new lines."""
        while not stop.is_set():
            try:
                while await asyncio.to_thread(self.index.catch_up, self.metering.recorder):
                    pass
                if orgs := self.index.drain_touched():
                    await asyncio.to_thread(self.spend.note, orgs)
            except Exception as e:  # noqa: BLE001 - store busy or another instance won: retry
                log.warning("usage projection pass failed: %r", e)
            try:
                await asyncio.wait_for(stop.wait(), every_s)
            except TimeoutError:
                pass

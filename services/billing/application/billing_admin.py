"""Billing administration: an org's Stripe customer, parked push lines."""
from __future__ import annotations

import asyncio

from contracts import billing as bc

from ..adapters.push_ledger import PushLedger
from ..domain.customer import CustomerLink
from .stripe_push import Customers, StripePush


class BillingAdmin:
    def __init__(self, customers: Customers, ledger: PushLedger,
                 push: StripePush | None) -> None:
        self.customers, self.ledger, self.push = customers, ledger, push

    def _view(self, org_id: str, link: CustomerLink | None) -> bc.CustomerLink:
        return bc.CustomerLink(org_id=org_id,
                               stripe_customer_id=link.customer_id if link else None,
                               source=link.source if link else None,
                               push_enabled=self.push is not None)

    async def customer(self, q: bc.CustomerQuery) -> bc.CustomerLink:
        return self._view(q.org_id, await asyncio.to_thread(self.customers.get, q.org_id))

    async def set_customer(self, q: bc.CustomerSet) -> bc.CustomerLink:
        link = await asyncio.to_thread(self.customers.link, q.org_id, q.stripe_customer_id,
                                       "admin")
        if self.push is not None:
            self.push.forget(q.org_id)
        return self._view(q.org_id, link)

    async def parked(self, q: bc.ParkedQuery) -> bc.ParkedPage:
        rows = await asyncio.to_thread(self.ledger.parked, q.limit, q.org_id)
        totals = await asyncio.to_thread(self.ledger.totals)
        return bc.ParkedPage(
            items=[bc.ParkedLine(identifier=r["identifier"], event_id=r["event_id"],
                                 org_id=r["org_id"], meter=r["event_name"], value=r["value"],
                                 timestamp=r["timestamp"], reason=r["reason"],
                                 attempts=r["attempts"]) for r in rows],
            totals=[bc.MeterTotal(meter=t["event_name"], state=t["state"], lines=t["lines"],
                                  value=t["value"]) for t in totals])

    async def retry(self, q: bc.RetryParked) -> bc.RetriedParked:
        n = await asyncio.to_thread(self.ledger.retry_parked, q.identifiers, q.org_id)
        if self.push is not None:
            self.push.wake()
        return bc.RetriedParked(retried=n)

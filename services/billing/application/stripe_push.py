"""Usage to Stripe: each pending ledger row becomes one meter event, sent at
most once at a time (claims), retried with backoff until Stripe takes it, or
parked with Stripe's reason when it never will. Metering never waits on this."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from common.eventstore import StoreApp

from ..adapters.push_ledger import PushLedger
from ..adapters.usage_index import UsageIndex
from ..domain.customer import CustomerLink, link_id
from ..domain.stripe_lines import MeterSpec, Outcome, PushLine, backoff_s, classify

log = logging.getLogger("corral.billing.stripe")
LINK_TTL_S = 10.0


class Stripe(Protocol):
    async def ensure_meters(self, specs: tuple[MeterSpec, ...]) -> dict[str, str]: ...
    async def create_customer(self, org_id: str) -> str: ...
    async def send(self, line: PushLine, customer_id: str) -> None: ...


class Customers:
    """Org -> Stripe customer links, as events in billing's store."""

    def __init__(self, store: StoreApp) -> None:
        self.store = store

    def get(self, org_id: str) -> CustomerLink | None:
        return self.store._get(link_id(org_id))

    def link(self, org_id: str, customer_id: str, source: str) -> CustomerLink:
        """An admin's link always wins; a created one never replaces another."""
        def attempt() -> CustomerLink:
            cur = self.get(org_id)
            if cur is None:
                cur = CustomerLink(org_id, customer_id, source)
            elif source == "created" or not cur.relink(customer_id, source):
                return cur
            self.store._save(cur)
            return cur
        return self.store.retry_on_conflict(attempt)


class StripePush:
    def __init__(self, ledger: PushLedger, index: UsageIndex, api: Stripe,
                 customers: Customers, specs: tuple[MeterSpec, ...], *,
                 create_customers: bool = True, backoff_max_s: float = 300,
                 every_s: float = 2.0, timeout_s: float = 10, batch: int = 16,
                 concurrency: int = 8) -> None:
        self.ledger, self.index, self.api, self.customers = ledger, index, api, customers
        self.specs = specs
        self.create_customers = create_customers
        self.backoff_max_s, self.every_s = backoff_max_s, every_s
        self.batch, self.slots = batch, asyncio.Semaphore(concurrency)
        # A claim outlives the slowest pass (every call timing out) twice over;
        # the claims of a process that died are retried once it expires.
        self.lease_s = (batch / concurrency + 1) * timeout_s * 2
        self.meters: dict[str, str] | None = None
        self._links: dict[str, tuple[float, str | None]] = {}
        self._looking: dict[str, asyncio.Lock] = {}  # one customer lookup per org at once
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                if self.meters is None:
                    self.meters = await self.api.ensure_meters(self.specs)
                    log.info("Stripe push on; meters %s", self.meters)
                n = await self.pass_once()
                failures = 0
            except Exception as e:  # noqa: BLE001 - Stripe or the store is down: later
                failures += 1
                n = 0
                log.warning("Stripe push pass failed (%d in a row): %s", failures, e)
            if n:
                continue
            self._wake.clear()
            wait = self.every_s if not failures else backoff_s(failures, self.backoff_max_s)
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
            await asyncio.wait(waiters, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()

    async def pass_once(self) -> int:
        """Push what is due; returns rows handled."""
        await asyncio.to_thread(self.index.catch_up_all, self.customers.store.recorder)
        rows = await asyncio.to_thread(self.ledger.claim, self.batch, self.lease_s)
        await asyncio.gather(*(self._one(r) for r in rows))
        return len(rows)

    async def _one(self, row: dict) -> None:
        line = PushLine(row["identifier"], row["event_id"], row["org_id"], row["event_name"],
                        row["value"], row["timestamp"])
        async with self.slots:
            try:
                customer = await self._customer(line.org_id)
                if customer is None:
                    outcome: Outcome = "park"
                    reason = "org has no Stripe customer (set one: PUT /v1/orgs/{id}/billing)"
                else:
                    await self.api.send(line, customer)
                    outcome, reason = "sent", ""
            except Exception as e:  # noqa: BLE001 - Stripe's answer, or none
                status, code = getattr(e, "status", None), getattr(e, "code", None)
                outcome, reason = classify(status, code), str(e) or e.__class__.__name__
            # recorded before the slot is freed: at most `concurrency` lines are
            # ever sent but not yet recorded, so a crash resends at most that many
            await asyncio.to_thread(self._record, line, row["attempts"], outcome, reason)

    def _record(self, line: PushLine, attempts: int, outcome: Outcome, reason: str) -> None:
        if outcome == "sent":
            self.ledger.sent(line.identifier)
        elif outcome == "park":
            log.warning("meter event %s parked: %s", line.identifier, reason)
            self.ledger.park(line.identifier, reason)
        elif outcome == "halt":
            log.error("Stripe refuses our key (%s); usage stays pending", reason)
            self.ledger.release(line.identifier, self.backoff_max_s)
        else:
            self.ledger.retry_later(line.identifier, reason,
                                    backoff_s(attempts + 1, self.backoff_max_s))

    async def _customer(self, org_id: str) -> str | None:
        lock = self._looking.setdefault(org_id, asyncio.Lock())
        async with lock:
            return await self._lookup(org_id)

    async def _lookup(self, org_id: str) -> str | None:
        hit = self._links.get(org_id)
        if hit and hit[0] > time.monotonic() and hit[1]:
            return hit[1]
        link = await asyncio.to_thread(self.customers.get, org_id)
        cid = link.customer_id if link else None
        if cid is None and self.create_customers:
            made = await self.api.create_customer(org_id)
            link = await asyncio.to_thread(self.customers.link, org_id, made, "created")
            cid = link.customer_id
            log.info("Stripe customer %s made for org %s", cid, org_id)
        self._links[org_id] = (time.monotonic() + LINK_TTL_S, cid)
        return cid

    def forget(self, org_id: str) -> None:
        """An admin changed the link here: use the new one at once."""
        self._links.pop(org_id, None)

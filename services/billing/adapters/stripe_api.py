"""Stripe through its own SDK: meters ensured by event name, customers made
for orgs, one meter event per push line. Every call has a timeout and no SDK
retries: the push ledger decides what is retried and when."""
from __future__ import annotations

import logging

from stripe import HTTPXClient, StripeClient, StripeError

from ..domain.stripe_lines import MeterSpec, PushLine

log = logging.getLogger("corral.billing.stripe")


class StripeFailure(Exception):
    """`status` None: no answer (refused, timeout); `code`: Stripe's error code."""

    def __init__(self, status: int | None, code: str | None, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status is not None else "no answer"
        return f"{where}{f' {self.code}' if self.code else ''}: {self.args[0]}"[:500]


def _failure(e: StripeError) -> StripeFailure:
    status = e.http_status if isinstance(e.http_status, int) else None
    return StripeFailure(status, e.code, e.user_message or str(e) or e.__class__.__name__)


class StripeApi:
    def __init__(self, api_key: str, api_base: str = "", timeout_s: float = 10) -> None:
        base = api_base.rstrip("/")
        self.client = StripeClient(
            api_key, http_client=HTTPXClient(timeout=timeout_s), max_network_retries=0,
            base_addresses={"api": base, "meter_events": base} if base else None)

    async def ensure_meters(self, specs: tuple[MeterSpec, ...]) -> dict[str, str]:
        """Meter id per event name: found among the active meters, or created."""
        try:
            found = {m.event_name: m.id async for m in (await self.client.v1.billing.meters
                     .list_async({"status": "active", "limit": 100})).auto_paging_iter()}
            for s in specs:
                if s.event_name not in found:
                    m = await self.client.v1.billing.meters.create_async({
                        "display_name": s.display_name, "event_name": s.event_name,
                        "default_aggregation": {"formula": "sum"},
                        "customer_mapping": {"type": "by_id",
                                             "event_payload_key": "stripe_customer_id"},
                        "value_settings": {"event_payload_key": "value"}},
                        {"idempotency_key": f"corral-meter-{s.event_name}"})
                    log.info("created Stripe meter %s (%s)", s.event_name, m.id)
                    found[s.event_name] = m.id
        except StripeError as e:
            raise _failure(e) from None
        return {s.event_name: found[s.event_name] for s in specs}

    async def create_customer(self, org_id: str) -> str:
        """A customer for `org_id`; the idempotency key makes a retry (or a
        second billing instance) get the same one back."""
        try:
            c = await self.client.v1.customers.create_async(
                {"name": f"Corral org {org_id}", "metadata": {"corral_org_id": org_id}},
                {"idempotency_key": f"corral-org-{org_id}"})
        except StripeError as e:
            raise _failure(e) from None
        return c.id

    async def send(self, line: PushLine, customer_id: str) -> None:
        try:
            await self.client.v1.billing.meter_events.create_async({
                "event_name": line.event_name, "identifier": line.identifier,
                "timestamp": line.timestamp,
                "payload": {"stripe_customer_id": customer_id, "value": line.value}})
        except StripeError as e:
            raise _failure(e) from None

"""Seam for pushing usage to a payment provider (e.g. Stripe meter events).

Not implemented yet: no push happens in this version. An implementation
consumes CORRAL_USAGE with its own durable consumer and must be idempotent:
the provider-side identifier is `UsageRecorded.event_id`, so a redelivered
record is never billed twice, and a failed push raises so the message is
retried (never acknowledged as done).
"""
from __future__ import annotations

from typing import Protocol

from contracts.usage import UsageRecorded


class PaymentProvider(Protocol):
    async def push_usage(self, record: UsageRecorded) -> None:
        """Report one line item; idempotent per `record.event_id`. Raise on failure."""

"""An org's link to its Stripe customer, as events in billing's store."""
from __future__ import annotations

import re
import uuid

from eventsourcing.domain import Aggregate, event

from .meter import NAMESPACE

CUSTOMER_ID_RE = re.compile(r"^cus_[A-Za-z0-9]{1,250}$")


def link_id(org_id: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"stripe-customer/{org_id}")


class CustomerLink(Aggregate):
    """`source`: "created" (made through the Stripe API for this org) or
    "admin" (set by an administrator, who may change it)."""

    @staticmethod
    def create_id(org_id: str, customer_id: str, source: str) -> uuid.UUID:
        return link_id(org_id)

    @event("Linked")
    def __init__(self, org_id: str, customer_id: str, source: str):
        self.org_id = org_id
        self.customer_id = customer_id
        self.source = source

    def relink(self, customer_id: str, source: str) -> bool:
        if (customer_id, source) == (self.customer_id, self.source):
            return False
        self._relinked(customer_id=customer_id, source=source)
        return True

    @event("Relinked")
    def _relinked(self, customer_id: str, source: str) -> None:
        self.customer_id = customer_id
        self.source = source

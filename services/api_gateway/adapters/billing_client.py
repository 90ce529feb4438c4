"""The billing service over request/reply: usage line items, Stripe customers
and parked push lines."""
from __future__ import annotations

from common.rpc import RpcClient
from contracts import billing as bc
from contracts import subjects
from contracts.rpc import UsagePage, UsageQuery

MAX_REPLY = 512 * 1024  # 500 items are ~130 KiB


class BillingClient(RpcClient):
    async def usage(self, query: UsageQuery) -> UsagePage:
        return await self.call(subjects.RPC_BILLING_USAGE, query, UsagePage,
                               max_bytes=MAX_REPLY)

    async def customer(self, q: bc.CustomerQuery) -> bc.CustomerLink:
        return await self.call(subjects.RPC_BILLING_CUSTOMER_GET, q, bc.CustomerLink)

    async def set_customer(self, q: bc.CustomerSet) -> bc.CustomerLink:
        return await self.call(subjects.RPC_BILLING_CUSTOMER_SET, q, bc.CustomerLink)

    async def parked(self, q: bc.ParkedQuery) -> bc.ParkedPage:
        return await self.call(subjects.RPC_BILLING_PARKED, q, bc.ParkedPage,
                               max_bytes=MAX_REPLY)

    async def retry_parked(self, q: bc.RetryParked) -> bc.RetriedParked:
        return await self.call(subjects.RPC_BILLING_RETRY, q, bc.RetriedParked)

    async def spend_of(self, org_id: str) -> bc.SpendStatus:
        return await self.call(subjects.RPC_BILLING_SPEND, bc.SpendQuery(org_id=org_id),
                               bc.SpendStatus)

    async def set_spend_cap(self, q: bc.SpendCapSet) -> bc.SpendStatus:
        return await self.call(subjects.RPC_BILLING_SPEND_CAP, q, bc.SpendStatus)

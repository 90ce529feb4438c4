"""The billing service's usage line items over request/reply."""
from __future__ import annotations

from common.rpc import RpcClient
from contracts import subjects
from contracts.rpc import UsagePage, UsageQuery

MAX_REPLY = 512 * 1024  # 500 items are ~130 KiB


class BillingClient(RpcClient):
    async def usage(self, query: UsageQuery) -> UsagePage:
        return await self.call(subjects.RPC_BILLING_USAGE, query, UsagePage,
                               max_bytes=MAX_REPLY)

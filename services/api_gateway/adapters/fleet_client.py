"""The scheduler's fleet administration over request/reply (any instance answers)."""
from __future__ import annotations

from typing import Literal

from common.rpc import RpcClient
from contracts import subjects
from contracts.rpc import HostAction, HostActionResult, HostList, ListHosts

MAX_REPLY = 4 << 20  # a large fleet's listing
ACTIONS = {"cordon": subjects.RPC_SCHEDULER_HOSTS_CORDON,
           "uncordon": subjects.RPC_SCHEDULER_HOSTS_UNCORDON,
           "drain": subjects.RPC_SCHEDULER_HOSTS_DRAIN}


class FleetClient(RpcClient):
    async def list_hosts(self, op_id: str) -> HostList:
        return await self.call(subjects.RPC_SCHEDULER_HOSTS_LIST, ListHosts(op_id=op_id),
                               HostList, max_bytes=MAX_REPLY)

    async def act(self, action: Literal["cordon", "uncordon", "drain"], host_id: str,
                  op_id: str) -> HostActionResult:
        return await self.call(ACTIONS[action], HostAction(host_id=host_id, op_id=op_id),
                               HostActionResult, max_bytes=MAX_REPLY)

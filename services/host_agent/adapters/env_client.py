"""The env of a sandbox this host starts, fetched from the gateway on the
host's own subject (the bus carries no env values)."""
from __future__ import annotations

from nats.aio.client import Client

from common.rpc import patient_request
from contracts.rpc import SandboxEnv, SandboxEnvRequest
from contracts.subjects import gateway_env_subject


class GatewayEnv:
    """`conflict` (the gateway has not yet seen the placement) and
    `unavailable` are retried for `patience_s`; anything else is final."""

    def __init__(self, nc: Client, host_id: str, patience_s: float = 20) -> None:
        self.nc, self.subject, self.patience_s = nc, gateway_env_subject(host_id), patience_s

    async def __call__(self, sandbox_id: str, org_id: str, op_id: str) -> dict[str, str]:
        ask = SandboxEnvRequest(sandbox_id=sandbox_id, org_id=org_id, op_id=op_id)
        return (await patient_request(self.nc, self.subject, ask, SandboxEnv, 3.0,
                                      self.patience_s)).env

"""Revocation broadcast: core NATS fan-out on AUTH_REVOKED (not JetStream)."""
from __future__ import annotations

from faststream.nats import NatsBroker

from contracts.rpc import Revoked
from contracts.subjects import AUTH_REVOKED


class NatsRevocationNotifier:
    def __init__(self, broker: NatsBroker):
        self.broker = broker

    async def key_revoked(self, key_id: str) -> None:
        await self.broker.publish(Revoked(id=key_id, revoked=True), AUTH_REVOKED)

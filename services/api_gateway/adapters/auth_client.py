"""Verifies API keys through the auth service (NATS request/reply), cached briefly.

A revocation broadcast drops the cache at once; otherwise entries expire
after `ttl_s`, so revocation takes effect within seconds everywhere.
"""
from __future__ import annotations

import hashlib
import time

from nats.aio.client import Client

from common.rpc import RpcFailure, request
from contracts import subjects
from contracts.rpc import Principal, VerifyKey


class Unauthorized(Exception):
    pass


class AuthClient:
    def __init__(self, nc: Client, ttl_s: float = 5.0, timeout_s: float = 3.0):
        self.nc = nc
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._cache: dict[str, tuple[float, Principal]] = {}

    async def start(self) -> None:
        async def _revoked(_msg) -> None:  # noqa: ANN001
            self._cache.clear()
        await self.nc.subscribe(subjects.AUTH_REVOKED, cb=_revoked)

    async def verify(self, key: str, op_id: str) -> Principal:
        digest = hashlib.sha256(key.encode()).hexdigest()
        hit = self._cache.get(digest)
        now = time.monotonic()
        if hit and hit[0] > now:
            return hit[1]
        try:
            principal = await request(self.nc, subjects.RPC_AUTH_VERIFY,
                                      VerifyKey(key=key, op_id=op_id), Principal, self.timeout_s)
        except RpcFailure as e:
            if e.code == "unauthorized":
                self._cache.pop(digest, None)
                raise Unauthorized() from None
            raise
        if len(self._cache) > 10000:
            self._cache.clear()
        self._cache[digest] = (now + self.ttl_s, principal)
        return principal

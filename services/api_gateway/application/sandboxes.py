"""Sandbox and snapshot use cases of the REST edge: the ledger's (sync, run in
worker threads) behind one admission path for creates and forks (rate limit
and quotas), the listings, and waits for a state."""
from __future__ import annotations

import asyncio
import functools
import logging
import time
from datetime import UTC, datetime
from typing import Any, Literal

from common.tracing import current_traceparent, tracer
from contracts.image import BUILTIN_IMAGES
from contracts.sandbox import NetworkSpec, SandboxSpec

from ..domain.quota import Limits
from ..domain.sandbox import Sandbox
from ..domain.snapshot import Snapshot
from .errors import TooMany, UseCaseError
from .ledger import SandboxLedger
from .op_limits import DEFAULT_OP_LIMITS, OpLimits
from .ports import Listing, Page
from .rate_limit import RateLimiter
from .spend import SpendGate
from .waiters import Waiters

log = logging.getLogger("corral.gateway")

STARTING = ("requested", "scheduled", "starting")
ENDED_UNSTARTED = ("failed", "lost", "destroyed", "stopping", "stopped")
Intent = Literal["stop", "start", "pause", "resume"]


class Sandboxes:
    def __init__(self, ledger: SandboxLedger, listing: Listing, limits: Limits,
                 limiter: RateLimiter, waiters: Waiters, ops: OpLimits | None = None,
                 snapshot_ttl_s: int = 7 * 86400, spend: SpendGate | None = None) -> None:
        self.ledger = ledger
        self.listing = listing
        self.limits = limits
        self.limiter = limiter
        self.waiters = waiters
        self.ops = ops or OpLimits(DEFAULT_OP_LIMITS)
        self.snapshot_ttl_s = snapshot_ttl_s
        self.spend = spend

    # -- creates and forks: one admission path ------------------------------------
    async def _admit(self, org_id: str, count: int) -> str | None:
        """Raises at a limit; returns a warning to pass on (spend near its cap)."""
        warning = await self.spend.admit(org_id) if self.spend else None
        wait_s = self.limiter.retry_after(org_id, count)
        if wait_s:
            raise TooMany("create rate limit reached for this org", wait_s)
        return warning

    async def _request(self, org_id: str, spec: SandboxSpec, op_id: str,
                       idempotency_key: str | None) -> tuple[Sandbox, bool]:
        with tracer("corral.gateway").start_as_current_span("create_sandbox"):
            return await asyncio.to_thread(self.ledger.request, org_id, spec, op_id,
                                           current_traceparent(), idempotency_key, self.limits)

    async def create(self, org_id: str, spec: SandboxSpec, op_id: str,
                     idempotency_key: str | None) -> tuple[Sandbox, bool, str | None]:
        """(sandbox, created: False for an idempotent replay, spend warning)."""
        warning = await self._admit(org_id, 1)
        if spec.image not in BUILTIN_IMAGES:  # the org's own image: what hosts boot (its ref)
            ref = await asyncio.to_thread(self.ledger.resolve_image, org_id, spec.image)
            spec = spec.model_copy(update={"image": ref})
        sb, created = await self._request(org_id, spec, op_id, idempotency_key)
        return sb, created, warning

    async def fork_spec(self, snapshot_id: str, org_id: str, ttl_seconds: int,
                        env: dict[str, str], metadata: dict[str, str],
                        network: NetworkSpec) -> SandboxSpec:
        """A create spec with the snapshot's shape (pydantic's ValidationError on bad
        input: the same rules as a create body)."""
        snap = await self.snapshot(snapshot_id, org_id)
        shape = snap.shape or {}
        return SandboxSpec(image=shape.get("image", "default"), vcpus=shape.get("vcpus", 1),
                           memory_mib=shape.get("memory_mib", 256), ttl_seconds=ttl_seconds,
                           env=env, metadata=metadata, network=network,
                           snapshot_id=snapshot_id)

    async def fork(self, org_id: str, spec: SandboxSpec, count: int,
                   op_id: str) -> list[Sandbox]:
        """`count` new sandboxes from the snapshot in `spec`, admitted like creates
        and within the org's fork bounds."""
        with self.ops.acquire(org_id, "fork"):
            await self._admit(org_id, count)
            return [(await self._request(org_id, spec, op_id, None))[0] for _ in range(count)]

    # -- reads ------------------------------------------------------------------
    async def find(self, sandbox_id: str, org_id: str) -> Sandbox:
        return await asyncio.to_thread(self.ledger.find, sandbox_id, org_id)

    async def _current(self, max_passes: int = 5) -> None:
        """Read your writes: the listing first catches up with the store, so it
        holds every change saved before the request (bounded; if another
        instance is projecting at that moment, answer anyway)."""
        try:
            for _ in range(max_passes):
                if not await self.listing.catch_up(self.ledger):
                    return
        except Exception as e:  # noqa: BLE001 - the projection loop retries
            log.warning("listing catch-up failed: %r", e)

    async def list_sandboxes(self, org_id: str, limit: int, cursor: str | None,
                             state: str | None, name: str | None) -> Page:
        await self._current()
        try:
            return await self.listing.list_sandboxes(org_id, limit, cursor, state, name)
        except ValueError as e:
            raise UseCaseError(str(e)) from None

    async def events(self, sandbox_id: str, org_id: str, start: int,
                     limit: int) -> tuple[list[dict[str, Any]], str | None]:
        events = await asyncio.to_thread(self.ledger.history, sandbox_id, org_id)
        nxt = str(start + limit) if start + limit < len(events) else None
        return events[start:start + limit], nxt

    async def env_for_host(self, sandbox_id: str, org_id: str, host_id: str) -> dict[str, str]:
        return await asyncio.to_thread(self.ledger.env_for_host, sandbox_id, org_id, host_id)

    # -- intents ------------------------------------------------------------------
    async def destroy(self, sandbox_id: str, org_id: str, op_id: str) -> Sandbox:
        return await asyncio.to_thread(self.ledger.request_destroy, sandbox_id, org_id, op_id,
                                       current_traceparent())

    async def intent(self, verb: Intent, sandbox_id: str, org_id: str, op_id: str) -> Sandbox:
        use_case = {"stop": self.ledger.request_stop, "start": self.ledger.request_start,
                    "pause": self.ledger.request_pause,
                    "resume": self.ledger.request_resume}[verb]
        return await asyncio.to_thread(use_case, sandbox_id, org_id, op_id,
                                       current_traceparent())

    async def extend_ttl(self, sandbox_id: str, org_id: str, ttl_seconds: int,
                         op_id: str, now: Any) -> Sandbox:
        return await asyncio.to_thread(self.ledger.extend_ttl, sandbox_id, org_id, ttl_seconds,
                                       op_id, current_traceparent(), now)

    # -- per-sandbox access (E2B's envd token) -------------------------------------
    def access_token(self, org_id: str, sandbox_id: str) -> str:
        return self.ledger.secrets.access_token(org_id, sandbox_id)

    def token_org(self, token: str, sandbox_id: str) -> str | None:
        return self.ledger.secrets.token_org(token, sandbox_id)

    # -- waits --------------------------------------------------------------------
    async def wait_running(self, sandbox_id: str, org_id: str, timeout_s: float) -> Sandbox:
        """Until running or ended without running, or the timeout."""
        return await self.waiters.until(
            sandbox_id, lambda: self.find(sandbox_id, org_id),
            lambda sb: sb.state == "running" or sb.state in ENDED_UNSTARTED,
            time.monotonic() + timeout_s)

    async def wait_settled(self, sandbox_id: str, org_id: str, want: str,
                           timeout_s: float) -> Sandbox:
        """Until `want` (paused after a pause, running after a resume), or an
        end it cannot leave (stopped, destroyed, failed, lost), or the timeout."""
        return await self.waiters.until(
            sandbox_id, lambda: self.find(sandbox_id, org_id),
            lambda sb: sb.state == want or sb.state in ("stopped", "destroyed", "failed", "lost"),
            time.monotonic() + timeout_s)

    async def wait_started(self, sandbox_ids: list[str], org_id: str,
                           timeout_s: float) -> list[Sandbox]:
        """Each until it is past starting, all within one timeout."""
        deadline = time.monotonic() + timeout_s
        return [await self.waiters.until(sid, functools.partial(self.find, sid, org_id),
                                         lambda sb: sb.state not in STARTING, deadline)
                for sid in sandbox_ids]

    async def wait_snapshot(self, snap: Snapshot, org_id: str, timeout_s: float) -> Snapshot:
        """Until the snapshot is no longer pending, or the timeout."""
        return await self.waiters.until(
            snap.sandbox_id, lambda: self.snapshot(str(snap.id), org_id),
            lambda s: s.state != "pending", time.monotonic() + timeout_s)

    # -- snapshots ----------------------------------------------------------------
    async def take_snapshot(self, sandbox_id: str, org_id: str, name: str, op_id: str,
                            ttl_s: int | None = None) -> Snapshot:
        """Within the org's snapshot rate here, and its quotas (count, bytes, in
        progress) in the store."""
        with self.ops.acquire(org_id, "snapshot"):
            return await asyncio.to_thread(
                self.ledger.request_snapshot, sandbox_id, org_id, name, op_id,
                current_traceparent(), self.limits, ttl_s or self.snapshot_ttl_s,
                datetime.now(UTC))

    async def snapshot(self, snapshot_id: str, org_id: str) -> Snapshot:
        return await asyncio.to_thread(self.ledger.find_snapshot, snapshot_id, org_id)

    async def list_snapshots(self, org_id: str, limit: int, cursor: str | None) -> Page:
        await self._current()
        try:
            return await self.listing.list_snapshots(org_id, limit, cursor)
        except ValueError as e:
            raise UseCaseError(str(e)) from None

    async def delete_snapshot(self, snapshot_id: str, org_id: str, op_id: str) -> Snapshot:
        return await asyncio.to_thread(self.ledger.request_snapshot_delete, snapshot_id, org_id,
                                       op_id, current_traceparent())

"""The event feed of `GET /v1/events`: sandbox and snapshot facts as the
durable stream holds them, for one org (or, for an admin, every org).

A host's report is shown only if that host holds the sandbox's placement,
the same rule the gateway applies before folding it in: a host cannot make
an org see a forged fact.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from contracts import InvalidMessage, parse_message
from contracts.registry import EVENT_TYPES
from contracts.subjects import HOST_FACT_PREFIX, HOST_FACT_TYPES

from .errors import NotFound, Unprocessable
from .ports import EventSource
from .sandboxes import Sandboxes

log = logging.getLogger("corral.gateway.events")
FEED_TYPES = tuple(t.model_fields["type"].default for t in EVENT_TYPES
                   if t.model_fields["type"].default.startswith(("Sandbox", "Snapshot")))
MAX_TYPES = 16
PLACEMENT_WAIT_S = 3.0  # a host fact can reach the stream before its placement is folded


@dataclass(frozen=True)
class FeedQuery:
    org_id: str | None  # None: every org (an admin's feed)
    sandbox_id: str | None = None
    types: tuple[str, ...] = ()
    after: int | None = None  # the stream sequence of the last event the client has
    since: datetime | None = None

    def subjects(self) -> list[str]:
        unknown = [t for t in self.types if t not in FEED_TYPES]
        if unknown or len(self.types) > MAX_TYPES:
            raise Unprocessable(f"unknown event types: {', '.join(unknown)[:200]}" if unknown
                               else f"at most {MAX_TYPES} types")
        org, sb = self.org_id or "*", self.sandbox_id or "*"
        types = self.types or ("*",)
        return ([f"corral.evt.sandbox.{org}.{sb}.{t}" for t in types]
                + [f"{HOST_FACT_PREFIX}*.{org}.{sb}.{t}" for t in types
                   if t == "*" or t in HOST_FACT_TYPES])


@dataclass(frozen=True)
class FeedEvent:
    seq: int  # stream sequence: the cursor to resume after this event
    type: str
    doc: dict[str, Any]


class EventFeed:
    def __init__(self, source: EventSource, sandboxes: Sandboxes, idle_s: float = 15) -> None:
        self.source = source
        self.sandboxes = sandboxes
        self.idle_s = idle_s

    async def follow(self, q: FeedQuery) -> AsyncIterator[FeedEvent | None]:
        """Events in stream order, for ever; None after `idle_s` without one
        (the caller sends a keepalive)."""
        placements: OrderedDict[str, str] = OrderedDict()
        async for item in self.source.follow(q.subjects(), q.after, q.since, self.idle_s):
            if item is None:
                yield None
                continue
            seq, subject, raw = item
            try:
                msg = parse_message(raw, subject=subject)
            except InvalidMessage as e:
                log.warning("feed skipped a message at %d: %s", seq, e.reason)
                continue
            if q.org_id is not None and msg.org_id != q.org_id:
                continue
            if msg.via_host is not None and not await self._holds(msg.via_host,
                                                                   msg, placements):
                log.warning("feed dropped %s from host %s: not its placement", msg.type,
                            msg.via_host, extra={"sandbox_id": getattr(msg, "sandbox_id", "")})
                continue
            yield FeedEvent(seq, msg.type, msg.model_dump(mode="json"))

    async def _holds(self, host_id: str, msg: Any, cache: OrderedDict[str, str]) -> bool:
        sid = msg.sandbox_id
        if sid not in cache:
            deadline = time.monotonic() + PLACEMENT_WAIT_S
            while True:
                try:
                    sb = await self.sandboxes.find(sid, msg.org_id)
                except NotFound:
                    return False
                if sb.host_id is not None or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            if sb.host_id is None:
                return False
            cache[sid] = sb.host_id
            if len(cache) > 4096:
                cache.popitem(last=False)
        return cache[sid] == host_id

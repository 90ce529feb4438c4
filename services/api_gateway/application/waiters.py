"""In-process wake-ups for `?wait=true` requests when a sandbox changes."""
from __future__ import annotations

import asyncio
from collections import defaultdict


class Waiters:
    def __init__(self) -> None:
        self._events: dict[str, set[asyncio.Event]] = defaultdict(set)

    def notify(self, sandbox_id: str) -> None:
        for ev in self._events.get(sandbox_id, ()):
            ev.set()

    async def wait(self, sandbox_id: str, timeout_s: float) -> None:
        ev = asyncio.Event()
        self._events[sandbox_id].add(ev)
        try:
            await asyncio.wait_for(ev.wait(), timeout_s)
        except asyncio.TimeoutError:
            pass
        finally:
            self._events[sandbox_id].discard(ev)
            if not self._events[sandbox_id]:
                self._events.pop(sandbox_id, None)

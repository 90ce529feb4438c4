"""Waiting for a sandbox (or its snapshot) to change: woken in-process when a
fact about it is folded in, re-checked at least every half second."""
from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


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
        except TimeoutError:
            pass
        finally:
            self._events[sandbox_id].discard(ev)
            if not self._events[sandbox_id]:
                self._events.pop(sandbox_id, None)

    async def until(self, sandbox_id: str, load: Callable[[], Awaitable[T]],
                    done: Callable[[T], bool], deadline: float) -> T:
        """`load()` again whenever the sandbox changes, until `done` holds or the
        (monotonic) deadline passes; returns the last value loaded."""
        while True:
            value = await load()
            remaining = deadline - time.monotonic()
            if done(value) or remaining <= 0:
                return value
            await self.wait(sandbox_id, min(0.5, max(remaining, 0.01)))

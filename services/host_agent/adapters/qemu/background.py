"""The driver's background work (template builds, warm-pool refills): one VM
boot or restore at a time, out of the way of creates, cancelled on close."""
from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any


class Background:
    def __init__(self) -> None:
        self.creating = 0  # creates in progress: background work waits for them
        self.closed = False
        self._slot: asyncio.Semaphore | None = None
        self._wake: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def _ensure(self) -> tuple[asyncio.Semaphore, asyncio.Event]:
        """Made on first use: they belong to the running event loop."""
        if self._slot is None or self._wake is None:
            self._slot, self._wake = asyncio.Semaphore(1), asyncio.Event()
        return self._slot, self._wake

    @property
    def slot(self) -> asyncio.Semaphore:
        """Held for each background boot or restore."""
        return self._ensure()[0]

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        self._ensure()
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    @contextmanager
    def create(self) -> Iterator[None]:
        """Mark a create in progress; background work resumes when it ends."""
        self._ensure()
        self.creating += 1
        try:
            yield
        finally:
            self.creating -= 1
            self.wake()

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def idle(self) -> None:
        """Wait until woken (a create ended, a refill is wanted, or close)."""
        wake = self._ensure()[1]
        wake.clear()
        await wake.wait()

    async def close(self) -> None:
        self.closed = True
        self.wake()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

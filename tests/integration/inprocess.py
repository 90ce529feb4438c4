"""Helpers for the auth and billing integration tests: run a service in-process."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def until(cond: Callable[[], Awaitable[bool]], timeout_s: float = 10,
                every_s: float = 0.05, what: str = "condition") -> None:
    """Poll an explicit condition until true; fail after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(every_s)


async def start_service(run: Callable[[asyncio.Event, asyncio.Event], Awaitable[None]],
                        timeout_s: float = 20) -> tuple[asyncio.Task, asyncio.Event]:
    """Run a service in-process until its `started` event; returns (task, stop)."""
    stop, started = asyncio.Event(), asyncio.Event()
    task = asyncio.ensure_future(run(stop, started))
    waiter = asyncio.ensure_future(started.wait())
    done, _ = await asyncio.wait([task, waiter], timeout=timeout_s,
                                 return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        waiter.cancel()
        task.result()  # raises the startup error
        raise AssertionError("service exited during startup")
    if waiter not in done:
        stop.set()
        raise AssertionError("service did not start in time")
    return task, stop


async def stop_service(task: asyncio.Task, stop: asyncio.Event) -> None:
    stop.set()
    await asyncio.wait_for(task, 20)

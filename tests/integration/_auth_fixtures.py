"""Helpers for the auth and billing integration tests.

Each test gets a private nats-server (not the session one from conftest), so
streams and durable consumers start empty and counts are exact.
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Iterator

import nats
import pytest
from nats.aio.client import Client

from common.natsserver import NatsServer


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


@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[NatsServer]:
    srv = NatsServer(tmp_path / "nats").start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
async def nc(private_nats: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(private_nats.url, connect_timeout=5)
    try:
        yield client
    finally:
        await client.close()

"""Fixtures of the integration tests.

`private_nats`: each test gets its own nats-server (not the session one from
the top conftest), so streams and durable consumers start empty and counts
are exact.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from common.natsserver import NatsServer

from .netns import Env, link_exists


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


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    """Bridge + veth guests + an "outside" namespace (netns.py); torn down after."""
    e = Env()
    try:
        await e.start()
        yield e
    finally:
        await e.stop()
        assert not await link_exists(e.bridge)

"""How consumers pull: one message at a time while idle (a batch fetch that
starts on an empty consumer stalls late arrivals, bench/fetch_stall.py),
batches while a backlog lasts, and nothing lost or reordered either way."""
import asyncio

import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from common.bus import Puller
from contracts.subjects import ConsumerDef

pytestmark = pytest.mark.integration


class Recording:
    """The real pull subscription, with the size of every fetch recorded."""

    def __init__(self, sub) -> None:
        self.sub, self.asks = sub, []

    async def fetch(self, batch: int, timeout: float):
        self.asks.append(batch)
        return await self.sub.fetch(batch, timeout=timeout)


async def test_idle_pulls_ask_for_one_and_a_backlog_is_taken_in_batches(nc):
    js = nc.jetstream()
    await js.add_stream(name="PULL", subjects=["p.>"])
    await js.add_consumer("PULL", ConsumerConfig(durable_name="d", ack_policy=AckPolicy.EXPLICIT))
    sub = Recording(await js.pull_subscribe_bind("d", stream="PULL"))
    pull = Puller(sub, ConsumerDef("PULL", "d", ("p.>",)), asyncio.Event(), 32)  # type: ignore[arg-type]

    assert await pull.next() == []  # idle: a long poll for one, which times out
    for i in range(40):
        await js.publish("p.x", str(i).encode())
    got = []
    while len(got) < 40:
        msgs = await pull.next()
        assert msgs, "a published message was not delivered"
        for m in msgs:
            got.append(int(m.data))
            await m.ack()
    assert got == list(range(40))
    # idle, then 1 (finds the backlog), then full batches until one comes back short
    assert sub.asks == [1, 1, 32, 32]
    assert await pull.next() == [] and sub.asks[-1] == 1  # drained: idle again

    await js.publish("p.x", b"late")
    msgs = await pull.next()
    assert [m.data for m in msgs] == [b"late"] and sub.asks[-1] == 1

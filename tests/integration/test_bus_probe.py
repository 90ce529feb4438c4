"""The scheduler's probe of its host-stream reader, against a real nats-server:
the bus counts as flowing only while the probe's own writes come back through
the reader, so a dead subscription or a stalled reader stops every verdict
even when no host writes anything (a static stream once looked "caught up"
forever), and a dead subscription is replaced."""
import asyncio
from types import SimpleNamespace

import pytest

from common.bus import Bus
from services.scheduler.application.liveness import Liveness
from services.scheduler.entrypoints.liveness_watch import (RESUBSCRIBE_AFTER_PROBES,
                                                           HostStreamReader, probe_bus)

pytestmark = pytest.mark.integration
INTERVAL = 0.3


async def until(check, within_s: float) -> float:
    """Seconds until `check()` held; fails after `within_s`."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not check():
        assert loop.time() - t0 < within_s, "condition never held"
        await asyncio.sleep(0.05)
    return loop.time() - t0


async def never(check, for_s: float) -> None:
    end = asyncio.get_running_loop().time() + for_s
    while asyncio.get_running_loop().time() < end:
        assert not check()
        await asyncio.sleep(0.05)


@pytest.fixture
async def judge(private_nats):
    bus = Bus(private_nats.url, "probe-test")
    await bus.connect()
    await bus.ensure_topology()
    ctx = SimpleNamespace(bus=bus, settings=SimpleNamespace(bus_probe_interval_s=INTERVAL,
                                                            instance="t"),
                          liveness=Liveness(3, max_probe_age_s=2 * INTERVAL + 0.5))
    reader = HostStreamReader(ctx)  # type: ignore[arg-type]
    await reader.subscribe()
    stop = asyncio.Event()

    async def ignore(_m) -> None:
        return None

    run = asyncio.ensure_future(reader.run(ignore, stop))
    probe = asyncio.ensure_future(probe_bus(ctx, reader, stop))  # type: ignore[arg-type]
    try:
        yield SimpleNamespace(ctx=ctx, reader=reader, run=run)
    finally:
        stop.set()
        await asyncio.gather(run, probe, return_exceptions=True)
        await reader.close()
        await bus.close()


async def test_flowing_needs_the_probes_own_writes_read_back_not_a_quiet_stream(judge):
    flowing = lambda: judge.ctx.liveness.is_flowing  # noqa: E731
    await until(flowing, 3 * INTERVAL + 1)  # nothing but the probe writes here
    assert judge.reader.processed_seq > 0  # it read the probes back

    # the reader's subscription dies silently; nothing else writes to the stream
    dead = judge.reader.sub
    await dead.unsubscribe()
    await until(lambda: not flowing(), 2 * INTERVAL + 1)  # within two probes
    # behind while the stream takes writes: subscribed afresh, flowing again
    await until(lambda: judge.reader.sub is not dead, (RESUBSCRIBE_AFTER_PROBES + 2) * INTERVAL + 1)
    await until(flowing, 3 * INTERVAL + 1)


async def test_a_stalled_reader_stops_every_verdict_until_it_reads_again(judge):
    flowing = lambda: judge.ctx.liveness.is_flowing  # noqa: E731
    await until(flowing, 3 * INTERVAL + 1)
    judge.run.cancel()  # messages arrive, nobody handles them
    await until(lambda: not flowing(), 2 * INTERVAL + 1)
    await never(flowing, (RESUBSCRIBE_AFTER_PROBES + 3) * INTERVAL)  # a new subscription is no cure
    judge.ctx.liveness.beat("h1", 0.1)
    await asyncio.sleep(1.0)  # ten of h1's intervals of silence
    assert judge.ctx.liveness.expired() == []  # deaf: no verdict

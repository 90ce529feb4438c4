"""Pull-consumer delivery latency: a fixed 32-message fetch (what every
consumer did) side by side with common.bus.Puller (a long poll of one, batches
only during a backlog), on one real nats-server, same arrivals for both.

Messages are published one at a time at random gaps (20 ms to 1.2 s, seeded),
as creates arrive; each is timed from publish to the consumer's hands.
    python bench/fetch_stall.py [--messages 150] [--seed 1]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nats
from nats.js.api import AckPolicy, ConsumerConfig

from common.bus import Puller
from common.natsserver import NatsServer
from contracts.subjects import ConsumerDef
from measure import pct


async def _fixed(sub, batch: int):  # type: ignore[no-untyped-def]
    try:
        return await sub.fetch(batch, timeout=1)
    except Exception:  # noqa: BLE001 - timeout: nothing this second
        return []


async def _side(js, name: str, gaps: list[float], use_puller: bool) -> dict:  # type: ignore[no-untyped-def]
    await js.add_consumer("BENCH", ConsumerConfig(durable_name=name, filter_subject=f"b.{name}",
                                                  ack_policy=AckPolicy.EXPLICIT))
    sub = await js.pull_subscribe_bind(name, stream="BENCH")
    stop = asyncio.Event()
    puller = Puller(sub, ConsumerDef("BENCH", name, (f"b.{name}",)), stop, 32)
    sent: dict[bytes, float] = {}
    lat: list[float] = []

    async def consume() -> None:
        while not stop.is_set():
            msgs = await puller.next() if use_puller else await _fixed(sub, 32)
            for m in msgs:
                lat.append((time.monotonic() - sent[m.data]) * 1000)
                await m.ack()
    task = asyncio.ensure_future(consume())
    for i, gap in enumerate(gaps):
        await asyncio.sleep(gap)
        key = str(i).encode()
        sent[key] = time.monotonic()
        await js.publish(f"b.{name}", key)
    await asyncio.sleep(1.5)
    stop.set()
    await asyncio.wait_for(task, 5)
    return {"delivered": len(lat), "p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95),
            "p99_ms": pct(lat, 99), "max_ms": round(max(lat), 1),
            "over_50ms": sum(x > 50 for x in lat)}


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=150)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    rng = random.Random(a.seed)
    gaps = [rng.uniform(0.02, 1.2) for _ in range(a.messages)]
    with tempfile.TemporaryDirectory(prefix="cbf-") as tmp:
        srv = NatsServer(Path(tmp)).start()
        try:
            nc = await nats.connect(srv.url)
            js = nc.jetstream()
            await js.add_stream(name="BENCH", subjects=["b.>"])
            fixed, puller = await asyncio.gather(_side(js, "fixed32", gaps, False),
                                                 _side(js, "puller", gaps, True))
            await nc.close()
        finally:
            srv.stop()
    print(json.dumps({"messages": a.messages, "seed": a.seed,
                      "baseline_fetch_32": fixed, "puller": puller}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))

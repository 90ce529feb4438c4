"""Billing over real NATS JetStream: facts in, exactly-once usage out, poison to the DLQ."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from common.bus import Bus
from common.service import serve
from contracts.sandbox import SandboxDestroyed, SandboxStarted, SandboxStopped
from contracts.usage import UsageRecorded
from services.billing.bootstrap import BillingContext, bootstrap
from services.billing.entrypoints.jobs import jobs
from services.billing.settings import BillingSettings

from .inprocess import start_service, stop_service, until

pytestmark = pytest.mark.integration
ORG = "org-1"


class Billing(Bus):
    """A test client bus, plus a handle on the in-process service."""
    app: BillingContext


async def _billing(private_nats, tmp_path: Path, **kw) -> AsyncIterator[Billing]:
    settings = BillingSettings(nats_url=private_nats.url, state_dir=tmp_path / "state",
                               store="sqlite", health_port=0, **kw)
    app = await bootstrap(settings)
    task, stop = await start_service(lambda st, ok: serve(app, jobs, st, ok))
    bus = Billing(private_nats.url, "billing-test")
    bus.app = app
    await bus.connect()
    try:
        yield bus
    finally:
        await bus.close()
        await stop_service(task, stop)


@pytest.fixture
async def billing(private_nats, tmp_path: Path) -> AsyncIterator[Billing]:
    async for bus in _billing(private_nats, tmp_path):
        yield bus


@pytest.fixture
async def billing_minute_periods(private_nats,
                                 tmp_path: Path) -> AsyncIterator[Billing]:
    async for bus in _billing(private_nats, tmp_path, billing_period_s=60, billing_grace_s=0,
                              billing_tick_s=0.1):
        yield bus


async def stream_messages(bus: Bus, stream: str) -> list:
    assert bus.js
    info = await bus.js.stream_info(stream)
    return [await bus.js.get_msg(stream, seq)
            for seq in range(info.state.first_seq, info.state.last_seq + 1)
            if info.state.messages]


async def usage(bus: Bus) -> list[UsageRecorded]:
    return [UsageRecorded.model_validate_json(m.data)
            for m in await stream_messages(bus, "CORRAL_USAGE")]


async def wait_usage(bus: Bus, n: int) -> list[UsageRecorded]:
    async def enough() -> bool:
        return len(await usage(bus)) >= n
    await until(enough, 15, what=f"{n} usage records")
    return await usage(bus)


def run_facts(sandbox_id: str, t0: datetime, secs: float, vcpus: int = 2, mem: int = 256):
    start = SandboxStarted(op_id="op-b", org_id=ORG, sandbox_id=sandbox_id, host_id="h1",
                           vcpus=vcpus, memory_mib=mem, accel="kvm", occurred_at=t0)
    stop = SandboxStopped(op_id="op-b", org_id=ORG, sandbox_id=sandbox_id, host_id="h1",
                          occurred_at=t0 + timedelta(seconds=secs))
    return start, stop


async def test_one_run_bills_once_despite_redelivery(billing: Billing):
    t0 = datetime.now(UTC) - timedelta(seconds=300)
    start, stop = run_facts("sb-a", t0, 90)
    await billing.publish(start)
    await billing.publish(stop)
    [u] = await wait_usage(billing, 1)
    assert (u.sandbox_id, u.org_id, u.vcpu_seconds, u.memory_mib_seconds) == (
        "sb-a", ORG, 180.0, 256 * 90.0)
    assert (u.period_start, u.period_end) == (t0, t0 + timedelta(seconds=90))

    # the same facts again: deduped by the stream, and (new msg ids, as after a
    # producer retry past the window) by the meter; plus a second end fact
    await billing.publish(start)
    await billing.publish(stop)
    assert billing.js
    for fact in (start, stop):
        await billing.js.publish(f"corral.evt.sandbox.{ORG}.sb-a.{fact.type}", fact.to_json(),
                                 headers={"Nats-Msg-Id": f"redo-{fact.event_id}"})
    await billing.publish(SandboxDestroyed(op_id="op-b", org_id=ORG, sandbox_id="sb-a",
                                           occurred_at=t0 + timedelta(seconds=95)))
    # a later sandbox is a marker: the consumer handles facts in order
    for f in run_facts("sb-marker", t0, 10):
        await billing.publish(f)
    records = await wait_usage(billing, 2)
    # the redo copies really reached the stream: only the meter dropped them
    assert len(await stream_messages(billing, "CORRAL_SANDBOX")) == 7
    assert sorted(r.sandbox_id for r in records) == ["sb-a", "sb-marker"]
    assert records[0].event_id == u.event_id
    meter = billing.app.metering.meter("sb-a")  # deduped in the meter, not just the stream
    assert meter is not None and meter.usage_ids == [u.event_id] and not meter.running


async def test_poison_goes_to_dlq_and_next_message_is_processed(billing: Bus):
    assert billing.js
    await billing.js.publish(f"corral.evt.sandbox.{ORG}.sb-p.SandboxStarted", b"\x00not json",
                             headers={"Nats-Msg-Id": "poison-1"})

    async def dead_lettered() -> bool:
        return bool(await stream_messages(billing, "CORRAL_DLQ"))
    await until(dead_lettered, 15, what="dead letter")
    [dl] = await stream_messages(billing, "CORRAL_DLQ")
    assert dl.subject == "corral.dlq.billing-metering"
    letter = json.loads(dl.data)
    assert letter["consumer"] == "billing-metering" and "not JSON" in letter["reason"]

    t0 = datetime.now(UTC) - timedelta(seconds=100)
    for f in run_facts("sb-ok", t0, 30, vcpus=1):
        await billing.publish(f)
    [u] = await wait_usage(billing, 1)
    assert (u.sandbox_id, u.vcpu_seconds) == ("sb-ok", 30.0)


async def test_long_run_is_cut_into_periods(billing_minute_periods: Bus):
    bus = billing_minute_periods
    t0 = datetime.now(UTC) - timedelta(seconds=150)
    start, _ = run_facts("sb-long", t0, 0, vcpus=1, mem=100)
    await bus.publish(start)
    first = await wait_usage(bus, 2)  # two full 60 s periods, no end fact yet
    assert [(u.period_start, u.period_end) for u in first[:2]] == [
        (t0, t0 + timedelta(seconds=60)), (t0 + timedelta(seconds=60), t0 + timedelta(seconds=120))]
    assert all(u.vcpu_seconds == 60.0 for u in first[:2])
    await bus.publish(SandboxStopped(op_id="op", org_id=ORG, sandbox_id="sb-long",
                                     occurred_at=t0 + timedelta(seconds=130)))

    async def closed() -> bool:
        return any(u.period_end == t0 + timedelta(seconds=130) for u in await usage(bus))
    await until(closed, 15, what="final period")
    records = await usage(bus)
    assert len({r.event_id for r in records}) == len(records) == 3
    assert sum(r.vcpu_seconds for r in records) == pytest.approx(130.0)

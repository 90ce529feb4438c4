"""Billing over real NATS JetStream: facts in, exactly-once usage out, poison to the DLQ."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from common.bus import Bus
from common.service import serve
from contracts import Envelope
from contracts.sandbox import SandboxDestroyed, SandboxScheduled, SandboxStarted, SandboxStopped
from contracts.subjects import host_fact_subject, subject_for
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


async def _billing(private_nats, tmp_path: Path, store: str = "sqlite",
                   **kw) -> AsyncIterator[Billing]:
    settings = BillingSettings(nats_url=private_nats.url, state_dir=tmp_path / "state",
                               store=store, health_port=0, **kw)
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


async def place(bus: Bus, sandbox_id: str, host: str = "h1") -> None:
    """The scheduler's placement (a control-plane fact)."""
    await bus.publish(SandboxScheduled(op_id="op-b", org_id=ORG, sandbox_id=sandbox_id,
                                       host_id=host))


async def report(bus: Bus, *facts: Envelope, host: str = "h1", msg_id: str = "") -> None:
    """Facts as host `host` publishes them: on its own subject."""
    for f in facts:
        await bus.jetstream.publish(subject_for(f, host), f.to_json(),
                                    headers={"Nats-Msg-Id": msg_id + f.event_id})


def run_facts(sandbox_id: str, t0: datetime, secs: float, vcpus: int = 2, mem: int = 256,
              host: str = "h1"):
    start = SandboxStarted(op_id="op-b", org_id=ORG, sandbox_id=sandbox_id, host_id=host,
                           vcpus=vcpus, memory_mib=mem, accel="kvm", occurred_at=t0)
    stop = SandboxStopped(op_id="op-b", org_id=ORG, sandbox_id=sandbox_id, host_id=host,
                          occurred_at=t0 + timedelta(seconds=secs))
    return start, stop


async def test_one_run_bills_once_despite_redelivery(billing: Billing):
    t0 = datetime.now(UTC) - timedelta(seconds=300)
    start, stop = run_facts("sb-a", t0, 90)
    await place(billing, "sb-a")
    await report(billing, start, stop)
    [u] = await wait_usage(billing, 1)
    assert (u.sandbox_id, u.org_id, u.vcpu_seconds, u.memory_mib_seconds) == (
        "sb-a", ORG, 180.0, 256 * 90.0)
    assert (u.period_start, u.period_end) == (t0, t0 + timedelta(seconds=90))

    # the same facts again: deduped by the stream, and (new msg ids, as after a
    # producer retry past the window) by the meter; plus a second end fact
    await report(billing, start, stop)
    await report(billing, start, stop, msg_id="redo-")
    await billing.publish(SandboxDestroyed(op_id="op-b", org_id=ORG, sandbox_id="sb-a",
                                           occurred_at=t0 + timedelta(seconds=95)))
    # a later sandbox is a marker: the consumer handles facts in order
    await place(billing, "sb-marker")
    await report(billing, *run_facts("sb-marker", t0, 10))
    records = await wait_usage(billing, 2)
    # the redo copies really reached the stream: only the meter dropped them
    assert len(await stream_messages(billing, "CORRAL_SANDBOX")) == 9
    assert sorted(r.sandbox_id for r in records) == ["sb-a", "sb-marker"]
    assert records[0].event_id == u.event_id
    meter = billing.app.metering.meter("sb-a")  # deduped in the meter, not just the stream
    assert meter is not None and meter.usage_ids == [u.event_id] and not meter.running


async def test_poison_goes_to_dlq_and_next_message_is_processed(billing: Bus):
    assert billing.js
    await billing.js.publish(host_fact_subject("h1", ORG, "sb-p", "SandboxStarted"),
                             b"\x00not json", headers={"Nats-Msg-Id": "poison-1"})

    async def dead_lettered() -> bool:
        return bool(await stream_messages(billing, "CORRAL_DLQ"))
    await until(dead_lettered, 15, what="dead letter")
    [dl] = await stream_messages(billing, "CORRAL_DLQ")
    assert dl.subject == "corral.dlq.billing-metering"
    letter = json.loads(dl.data)
    assert letter["consumer"] == "billing-metering" and "not JSON" in letter["reason"]

    t0 = datetime.now(UTC) - timedelta(seconds=100)
    await place(billing, "sb-ok")
    await report(billing, *run_facts("sb-ok", t0, 30, vcpus=1))
    [u] = await wait_usage(billing, 1)
    assert (u.sandbox_id, u.vcpu_seconds) == ("sb-ok", 30.0)


async def test_only_the_placement_host_is_billed_for(billing: Billing):
    """A host's run facts count only once the placement is known, and only from
    the host it names: another host's report bills nothing and is dead-lettered."""
    t0 = datetime.now(UTC) - timedelta(seconds=100)
    await report(billing, *run_facts("sb-x", t0, 40, host="h2"), host="h2")  # waits: unplaced
    await place(billing, "sb-x", host="h1")  # ...on h1: h2's facts are poison

    async def refused() -> bool:
        return len([m for m in await stream_messages(billing, "CORRAL_DLQ")
                    if "placed on h1" in json.loads(m.data)["reason"]]) == 2
    await until(refused, 15, what="h2's facts dead-lettered")
    start, stop = run_facts("sb-x", t0, 20)
    await report(billing, start, stop, host="h1")
    [u] = await wait_usage(billing, 1)
    assert (u.sandbox_id, u.vcpu_seconds) == ("sb-x", 40.0)  # h1's 20 s at 2 vCPU


async def test_long_run_is_cut_into_periods(billing_minute_periods: Bus):
    bus = billing_minute_periods
    t0 = datetime.now(UTC) - timedelta(seconds=150)
    start, _ = run_facts("sb-long", t0, 0, vcpus=1, mem=100)
    await place(bus, "sb-long")
    await report(bus, start)
    first = await wait_usage(bus, 2)  # two full 60 s periods, no end fact yet
    assert [(u.period_start, u.period_end) for u in first[:2]] == [
        (t0, t0 + timedelta(seconds=60)), (t0 + timedelta(seconds=60), t0 + timedelta(seconds=120))]
    assert all(u.vcpu_seconds == 60.0 for u in first[:2])
    await report(bus, SandboxStopped(op_id="op", org_id=ORG, sandbox_id="sb-long", host_id="h1",
                                     occurred_at=t0 + timedelta(seconds=130)))

    async def closed() -> bool:
        return any(u.period_end == t0 + timedelta(seconds=130) for u in await usage(bus))
    await until(closed, 15, what="final period")
    records = await usage(bus)
    assert len({r.event_id for r in records}) == len(records) == 3
    assert sum(r.vcpu_seconds for r in records) == pytest.approx(130.0)

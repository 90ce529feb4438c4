"""Usage to Stripe through the real `stripe` SDK, against a local server that
speaks its endpoints (corral.fake_stripe) and injects failures: each usage line
becomes exactly one meter event per meter, through 500s, 429s, a dead server,
redelivery, two pushers at once, and parked lines an admin retries."""
from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from contracts import billing as bc
from contracts import rpc
from corral.fake_stripe import FakeStripe

from .inprocess import until
from .test_billing_service import ORG, Billing, _billing, place, report, run_facts, wait_usage

pytestmark = pytest.mark.integration
METERS = ("corral_vcpu_seconds", "corral_memory_gib_seconds")


@pytest.fixture
def fake() -> AsyncIterator[FakeStripe]:
    f = FakeStripe().serve()
    yield f
    f.stop()


async def _stripe_billing(private_nats, tmp_path: Path, fake: FakeStripe,
                          **kw) -> AsyncIterator[Billing]:
    async for bus in _billing(private_nats, tmp_path, stripe_api_key="sk_test_corral",
                              stripe_api_base=fake.url, stripe_push_every_s=0.2,
                              stripe_backoff_max_s=2, **kw):
        yield bus


@pytest.fixture
async def billing(private_nats, tmp_path: Path, fake: FakeStripe) -> AsyncIterator[Billing]:
    async for bus in _stripe_billing(private_nats, tmp_path, fake):
        yield bus


async def make_usage(bus: Billing, n: int, prefix: str = "sb") -> list:
    t0 = datetime.now(UTC) - timedelta(seconds=600)
    for i in range(n):
        await place(bus, f"{prefix}-{i}")
        await report(bus, *run_facts(f"{prefix}-{i}", t0, 30 + 7.3 * i, vcpus=1 + i % 3,
                                     mem=256 + 128 * i))
    return await wait_usage(bus, n)


async def items(bus: Billing) -> list[rpc.UsageItem]:
    now = datetime.now(UTC)
    page = await bus.app.usage.page(rpc.UsageQuery(org_id=ORG, **{
        "from": now - timedelta(days=1), "to": now + timedelta(days=1)}, limit=500))
    return page.items


async def all_sent(bus: Billing, lines: int, timeout_s: float = 30) -> list[rpc.UsageItem]:
    async def done() -> bool:
        got = [p for i in await items(bus) for p in i.stripe]
        return len(got) == lines and all(p.state == "sent" for p in got)
    await until(done, timeout_s, what=f"{lines} meter events sent")
    return await items(bus)


def expected_totals(usage: list) -> dict[str, float]:
    """From the UsageRecorded lines themselves (not from the push's own values)."""
    return {"corral_vcpu_seconds": sum(u.vcpu_seconds for u in usage),
            "corral_memory_gib_seconds": sum(u.memory_mib_seconds for u in usage) / 1024}


def assert_totals_match(fake: FakeStripe, usage: list) -> None:
    got, want = fake.totals(), expected_totals(usage)
    assert set(got) == set(want)
    for name, v in want.items():
        assert abs(got[name] - v) <= 1e-6 * len(usage), (name, got[name], v)


def posts(fake: FakeStripe) -> Counter:
    return Counter(i for path, i, _ in fake.attempts if path == "/v1/billing/meter_events")


async def test_a_500_on_every_first_attempt_still_bills_each_line_once(billing, fake):
    fake.faults["fail_first"] = 500
    usage = await make_usage(billing, 6)
    sent = await all_sent(billing, 12)
    assert_totals_match(fake, usage)
    idents = {p.identifier for i in sent for p in i.stripe}
    assert idents == {f"{u.event_id}:{m}" for u in usage for m in METERS}
    assert set(fake.events) == idents
    # each identifier: the injected 500, then one 200; never a resend after success
    assert all(n == 2 for n in posts(fake).values()), posts(fake)
    statuses = Counter(s for p, _, s in fake.attempts if p == "/v1/billing/meter_events")
    assert statuses == {500: 12, 200: 12}
    # the ledger's totals per meter are exactly what Stripe holds
    totals = (await billing.app.admin.parked(bc.ParkedQuery())).totals
    assert {(t.meter, t.state, t.lines) for t in totals} == {(m, "sent", 6) for m in METERS}
    assert {t.meter: Decimal(t.value) for t in totals} == {
        m: sum(Decimal(e["payload"]["value"]) for e in fake.events.values()
               if e["event_name"] == m) for m in METERS}
    # the org got one customer, made through the API and linked by an event
    link = await billing.app.admin.customer(bc.CustomerQuery(org_id=ORG))
    assert link.source == "created" and list(fake.customers) == [link.stripe_customer_id]
    assert {e["payload"]["stripe_customer_id"] for e in fake.events.values()} == {
        link.stripe_customer_id}
    # the event's timestamp is the usage period's end
    u = usage[0]
    assert fake.events[f"{u.event_id}:corral_vcpu_seconds"]["timestamp"] == int(
        u.period_end.timestamp())


async def test_a_429_burst_delays_but_loses_and_repeats_nothing(billing, fake):
    fake.faults["rate_limit_next"] = 25
    usage = await make_usage(billing, 5)
    await all_sent(billing, 10)
    assert_totals_match(fake, usage)
    assert fake.faults["rate_limit_next"] == 0  # the burst was really served
    assert all(fake.accepted_posts(i) == 1 for i in fake.events)
    assert not [a for a in fake.attempts if a[2] == 400]  # no resend of a sent line


async def test_a_dead_stripe_for_a_minute_loses_nothing_and_metering_goes_on(billing, fake):
    fake.stop()  # connections refused from here
    usage = await make_usage(billing, 4)  # metering works while Stripe is down
    await asyncio.sleep(60)
    pending = [p for i in await items(billing) for p in i.stripe]
    assert len(pending) == 8 and all(p.state == "pending" for p in pending)
    assert not fake.events
    fake.serve()  # back, same port
    await all_sent(billing, 8, timeout_s=30)
    assert_totals_match(fake, usage)
    assert all(fake.accepted_posts(i) == 1 for i in fake.events)


async def test_redelivered_facts_and_two_pushers_send_each_line_once(private_nats, tmp_path,
                                                                     fake, store):
    """On both stores: the ledger's claims keep racing pushers apart."""
    async for billing in _stripe_billing(private_nats, tmp_path, fake, store=store):
        await _redelivered_and_raced(billing, fake)


async def _redelivered_and_raced(billing: Billing, fake: FakeStripe) -> None:
    usage = await make_usage(billing, 4)
    t0 = datetime.now(UTC) - timedelta(seconds=600)
    for i in range(4):  # the same facts again, past the stream's dedupe window
        await report(billing, *run_facts(f"sb-{i}", t0, 30 + 7.3 * i, vcpus=1 + i % 3,
                                         mem=256 + 128 * i), msg_id="redo-")
    push = billing.app.push
    assert push is not None
    await asyncio.gather(*(push.pass_once() for _ in range(4)))  # racing the running one
    await all_sent(billing, 8)
    assert len(await items(billing)) == 4
    assert_totals_match(fake, usage)
    assert all(n == 1 for n in posts(fake).values()), posts(fake)


async def test_a_refused_line_is_parked_visibly_and_an_admin_retry_sends_it(billing, fake):
    admin = billing.app.admin
    await admin.set_customer(bc.CustomerSet(org_id=ORG, stripe_customer_id="cus_gone"))
    usage = await make_usage(billing, 2)

    async def parked() -> bool:
        return len((await admin.parked(bc.ParkedQuery())).items) == 4
    await until(parked, 30, what="4 parked lines")
    page = await admin.parked(bc.ParkedQuery(org_id=ORG))
    assert all("No such customer" in (p.reason or "") for p in page.items)
    assert {(t.meter, t.state, t.lines) for t in page.totals} == {
        (m, "parked", 2) for m in METERS}
    shown = [p for i in await items(billing) for p in i.stripe]
    assert {p.state for p in shown} == {"parked"}
    await asyncio.sleep(1)  # parked lines are not retried on their own
    assert not fake.events and len(posts(fake)) == 4

    real = await asyncio.to_thread(fake.handle, "POST", "/v1/customers", {}, {}, None)
    await admin.set_customer(bc.CustomerSet(org_id=ORG, stripe_customer_id=real[1]["id"]))
    assert (await admin.retry(bc.RetryParked())).retried == 4
    await all_sent(billing, 4)
    assert_totals_match(fake, usage)
    assert (await admin.parked(bc.ParkedQuery())).items == []


async def test_without_a_key_billing_meters_and_says_the_push_is_off(private_nats, tmp_path):
    async for bus in _billing(private_nats, tmp_path):
        assert bus.app.push is None
        await make_usage(bus, 1)
        [item] = await items(bus)
        assert [p.state for p in item.stripe] == ["pending", "pending"]
        link = await bus.app.admin.customer(bc.CustomerQuery(org_id=ORG))
        assert link.push_enabled is False and link.stripe_customer_id is None

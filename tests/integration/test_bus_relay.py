"""Outbox relay and consumers against a real nats-server."""
import asyncio
import json
import uuid

import pytest

from common.bus import Bus, Poison
from common.eventstore import store_env
from common.relay import OutboxRelay
from contracts.sandbox import SandboxScheduled, SandboxSpec
from contracts.subjects import ConsumerDef
from services.api_gateway.adapters.sealer import Sealer
from services.api_gateway.application.ledger import SandboxLedger

KEY = bytes(range(32))
pytestmark = pytest.mark.integration


@pytest.fixture
async def bus(nats_server):
    b = Bus(nats_server.url, "test")
    await b.connect()
    await b.ensure_topology()
    yield b
    await b.close()


async def stream_msgs(bus: Bus, subject: str) -> list:
    """Every message on a subject, read without consuming."""
    out = []
    sub = await bus.js.subscribe(subject, ordered_consumer=True)
    info = await bus.js.stream_info(await bus.js.find_stream_name_by_subject(subject))
    try:
        while True:
            m = await sub.next_msg(timeout=0.5)
            out.append(m)
    except Exception:  # noqa: BLE001 - timeout: no more
        pass
    await sub.unsubscribe()
    assert info.state.messages >= len(out)
    return out


async def test_relay_publishes_in_order_resumes_and_dedupes(bus, tmp_path, store):
    ledger = SandboxLedger(store_env(store, tmp_path, "gateway"), Sealer(KEY))
    org = "org" + uuid.uuid4().hex[:8]
    sids = []
    for _ in range(3):
        sb, _ = ledger.request(org, SandboxSpec(), "op", None, None)
        # folded in from the scheduler: stored, never published again from here
        ledger.ingest(SandboxScheduled(op_id="op", org_id=org, sandbox_id=str(sb.id), host_id="h"))
        ledger.request_destroy(str(sb.id), org, "op", None)  # the gateway's own
        sids.append(str(sb.id))
    relay = OutboxRelay(ledger, bus, name="relay-test")
    while await relay.drain_once():
        pass
    assert relay.published == 6  # quota bookkeeping and folded facts: not published
    # crash after publishing but before saving the cursor: replay everything
    relay2 = OutboxRelay(ledger, bus, name="relay-test-2")
    while await relay2.drain_once():
        pass
    assert relay2.published == 6
    # a restarted relay with the first relay's cursor publishes nothing
    relay3 = OutboxRelay(ledger, bus, name="relay-test")
    assert await relay3.drain_once() == 0 and relay3.published == 0
    msgs = await stream_msgs(bus, f"corral.evt.sandbox.{org}.>")
    ids = [json.loads(m.data)["event_id"] for m in msgs]
    assert len(ids) == 6 and len(set(ids)) == 6  # the duplicate window dropped the replay
    for sid in sids:  # per-aggregate order preserved
        types = [json.loads(m.data)["type"] for m in msgs if f".{sid}." in m.subject]
        assert types == ["SandboxRequested", "SandboxDestroyRequested"]
    assert all(m.headers["Nats-Msg-Id"] == json.loads(m.data)["event_id"] for m in msgs)
    ledger.close()


async def test_poison_is_dead_lettered_and_stream_not_blocked(bus):
    tag = uuid.uuid4().hex[:8]
    c = ConsumerDef("CORRAL_SANDBOX", f"t-{tag}", (f"corral.evt.sandbox.{tag}.>",),
                    max_deliver=3, ack_wait_s=5)
    await bus.ensure_consumer(c)
    handled: list[str] = []
    fail_first = {"n": 0}

    async def handler(msg):
        if msg.op_id == "poison":
            raise Poison("cannot ever apply")
        if msg.op_id == "flaky" and fail_first["n"] < 1:
            fail_first["n"] += 1
            raise RuntimeError("transient")
        if msg.op_id == "always-fails":
            raise RuntimeError("broken handler")
        handled.append(msg.op_id)

    def ev(op):
        return SandboxScheduled(op_id=op, org_id=tag, sandbox_id="s1", host_id="h")
    await bus.js.publish(f"corral.evt.sandbox.{tag}.s1.SandboxScheduled", b"not json")
    await bus.js.publish(f"corral.evt.sandbox.{tag}.s1.X", b'{"type": "Nope"}')
    bad = json.loads(ev("x").to_json())
    bad["host_id"] = ""
    await bus.js.publish(f"corral.evt.sandbox.{tag}.s1.SandboxScheduled", json.dumps(bad).encode())
    for op in ("poison", "always-fails", "flaky", "ok"):
        await bus.publish(ev(op), subject=f"corral.evt.sandbox.{tag}.s1.SandboxScheduled")
    stop = asyncio.Event()
    task = asyncio.create_task(bus.consume(c, handler, stop))
    dlq_sub = await bus.js.subscribe(f"corral.dlq.t-{tag}", ordered_consumer=True)
    letters = []
    try:
        async with asyncio.timeout(30):
            while len(letters) < 5 or len(handled) < 2:
                try:
                    m = await dlq_sub.next_msg(timeout=0.5)
                    letters.append(json.loads(m.data))
                except Exception:  # noqa: BLE001
                    pass
    finally:
        stop.set()
        await task
    assert sorted(handled) == ["flaky", "ok"]
    reasons = " | ".join(x["reason"] for x in letters)
    assert "not JSON" in reasons and "unknown type" in reasons and "invalid SandboxScheduled" in reasons
    assert "poison" in reasons and "gave up after 3" in reasons
    assert all(x["consumer"] == f"t-{tag}" for x in letters)


async def test_the_relay_parks_what_the_bus_never_takes_and_flows_on(tmp_path):
    """On a server with a small max_payload: an event larger than it is parked
    (dead letter + alarm), and the events behind it are published in order."""
    from eventsourcing.domain import Aggregate, event

    from common.eventstore import StoreApp
    from common.natsserver import NatsServer
    from contracts.host import HostCapacity, HostHeartbeat

    class Outbox(Aggregate):
        @event("Noted")
        def note(self, envelope: dict) -> None:
            pass

    server = NatsServer(tmp_path / "nats", max_payload=256 * 1024).start()
    bus = Bus(server.url, "park-test")
    app = StoreApp(store_env("sqlite", tmp_path, "park"))
    try:
        await bus.connect()
        await bus.ensure_topology()
        cap = HostCapacity(vcpus=1, memory_mib=64, max_sandboxes=1)

        def beat(seq: int, pools: int) -> dict:
            return json.loads(HostHeartbeat(
                op_id="op", host_id="h-park", seq=seq, accel="kvm", capacity=cap, running=0,
                used_vcpus=0, used_memory_mib=0, interval_s=1,
                pools={f"p{i}": {f"k{j}": j for j in range(pools)} for i in range(8)},
            ).to_json())
        box = Outbox()
        for seq, pools in ((1, 1), (2, 5000), (3, 1)):  # the middle one is ~600 KB
            box.note(beat(seq, pools))
        app._save(box)
        relay = OutboxRelay(app, bus, name="park-relay")
        while await relay.drain_once():
            pass
        assert (relay.published, relay.parked) == (2, 1)
        seen = [json.loads(m.data)["seq"] for m in
                await stream_msgs(bus, "corral.evt.host.h-park.HostHeartbeat")]
        assert seen == [1, 3]
        [letter] = [json.loads(m.data) for m in await stream_msgs(bus, "corral.dlq.park-relay")]
        assert "MaxPayload" in letter["reason"] and letter["consumer"] == "park-relay"
        assert letter["subject"] == "corral.evt.host.h-park.HostHeartbeat"
        assert len(letter["payload"]) == 65536  # the head of it, for the operator
    finally:
        await bus.close()
        app.close()
        server.stop()


async def test_parallel_consumer_keeps_each_sandboxs_facts_in_order_across_subjects(bus):
    """The gateway folds facts 8 at a time: a sandbox's control-plane event and
    its host's facts (different subjects) still arrive in publish order, while
    different sandboxes overlap."""
    from contracts.sandbox import SandboxStarted, SandboxStarting
    from contracts.subjects import sandbox_of_subject
    tag = uuid.uuid4().hex[:8]
    c = ConsumerDef("CORRAL_SANDBOX", f"p-{tag}", (f"corral.evt.sandbox.{tag}.>",
                                                  f"corral.evt.hostfact.h.{tag}.>"),
                    ack_wait_s=30)
    await bus.ensure_consumer(c)
    sids = [f"s{i}" for i in range(12)]
    for sid in sids:
        await bus.publish(SandboxScheduled(op_id="1", org_id=tag, sandbox_id=sid, host_id="h"),
                          subject=f"corral.evt.sandbox.{tag}.{sid}.SandboxScheduled")
        await bus.publish(SandboxStarting(op_id="2", org_id=tag, sandbox_id=sid, host_id="h"),
                          subject=f"corral.evt.hostfact.h.{tag}.{sid}.SandboxStarting")
        await bus.publish(SandboxStarted(op_id="3", org_id=tag, sandbox_id=sid, host_id="h",
                                         vcpus=1, memory_mib=256, accel="tcg"),
                          subject=f"corral.evt.hostfact.h.{tag}.{sid}.SandboxStarted")
    seen: dict[str, list[str]] = {sid: [] for sid in sids}
    active, peak = 0, 0
    all_seen = asyncio.Event()

    async def handler(msg):
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.02 if msg.op_id == "1" else 0.001)  # the first is slowest
        seen[msg.sandbox_id].append(msg.op_id)
        active -= 1
        if sum(map(len, seen.values())) == 36:
            all_seen.set()
    stop = asyncio.Event()
    task = asyncio.create_task(bus.consume(c, handler, stop, concurrency=8,
                                           order_key=sandbox_of_subject))
    try:
        await asyncio.wait_for(all_seen.wait(), 30)
    finally:
        stop.set()
        await task
    assert all(ops == ["1", "2", "3"] for ops in seen.values()), seen
    assert peak > 1


async def test_an_outage_mid_batch_resumes_at_the_first_unstored_message(bus, tmp_path):
    """The relay pipelines a batch (all sent, then all acks awaited). When an ack
    does not come, the cursor stops just before that message, so the next pass
    republishes it and what followed (the stream drops the duplicates)."""
    from nats.errors import TimeoutError as NatsTimeout
    ledger = SandboxLedger(store_env("sqlite", tmp_path, "gateway"), Sealer(KEY))
    org = "org" + uuid.uuid4().hex[:8]
    for _ in range(4):
        ledger.request(org, SandboxSpec(), "op", None, None)
    real = bus.publish_pipelined
    calls: list[int] = []

    async def flaky(items, timeout_s=10):
        out = await real(items, timeout_s)
        calls.append(len(items))
        if len(calls) == 1:  # the third ack is lost the first time
            out[2] = NatsTimeout()
        return out
    bus.publish_pipelined = flaky
    relay = OutboxRelay(ledger, bus, name="relay-outage")
    try:
        with pytest.raises(NatsTimeout):
            await relay.drain_once()
        assert relay.published == 2
        while await relay.drain_once():
            pass
    finally:
        bus.publish_pipelined = real
        ledger.close()
    assert calls[:2] == [4, 2]  # resumed at the third message
    msgs = await stream_msgs(bus, f"corral.evt.sandbox.{org}.>")
    assert len(msgs) == 4 and len({json.loads(m.data)["event_id"] for m in msgs}) == 4

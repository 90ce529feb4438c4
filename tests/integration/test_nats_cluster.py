"""A 3-node NATS cluster (routes on loopback) with R3 streams: start-up
creates them at the configured replicas and never scales one down, and a
node killed with SIGKILL mid-burst loses no event (publishers retry with the
same Nats-Msg-Id, as the outbox relay does)."""
import asyncio
import contextlib

import nats
import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import APIError

from common.bus import Bus
from common.natsconf import cluster_of
from common.natsserver import NatsServer
from contracts.sandbox import SandboxStopRequested
from contracts.subjects import STREAMS

pytestmark = pytest.mark.integration
N = 300


@pytest.fixture
def cluster(tmp_path):
    nodes = [NatsServer(tmp_path / c.server_name, cluster=c) for c in cluster_of(3)]
    try:
        for n in nodes:
            n.start()
        yield nodes
    finally:
        for n in nodes:
            n.stop()


async def _bus(nodes, replicas: int) -> Bus:
    bus = Bus(",".join(n.url for n in nodes), "cluster-test")
    bus.stream_replicas = replicas
    await bus.connect()
    return bus


async def _until_meta_leader(nodes, timeout_s: float = 30) -> None:
    nc = await nats.connect([n.url for n in nodes])
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            try:
                await nc.jetstream().account_info()
                return
            except (APIError, NatsTimeout, NoRespondersError):
                assert asyncio.get_running_loop().time() < deadline, "no JetStream leader"
                await asyncio.sleep(0.25)
    finally:
        await nc.close()


async def _replicas(bus: Bus) -> dict[str, int]:
    return {s.name: (await bus.jetstream.stream_info(s.name)).config.num_replicas
            for s in STREAMS}


async def test_r3_streams_survive_a_node_killed_mid_burst_and_start_up_never_downgrades(
        cluster):
    await _until_meta_leader(cluster)
    bus = await _bus(cluster, 3)
    await bus.ensure_topology()
    assert set((await _replicas(bus)).values()) == {3}

    # a service started with the default (1) must not undo the operator's R3
    plain = await _bus(cluster, 1)
    await plain.ensure_topology()
    assert set((await _replicas(plain)).values()) == {3}
    await plain.close()

    info = await bus.jetstream.stream_info("CORRAL_SANDBOX")
    leader = next(n for n, c in zip(cluster, cluster_of_names(cluster), strict=True)
                  if c == info.cluster.leader)
    msgs = [SandboxStopRequested(op_id=f"op_{i}", org_id="org", sandbox_id=f"sb-{i}")
            for i in range(N)]
    retries, stored_at_kill = 0, -1
    done: list[str] = []
    quarter = asyncio.Event()

    async def publish(m) -> None:
        nonlocal retries
        for _ in range(200):
            try:
                await bus.publish(m, timeout_s=2)
                done.append(m.event_id)
                if len(done) >= N // 4:
                    quarter.set()
                return
            except Exception:  # noqa: BLE001 - the leader is gone: retry, same msg id
                retries += 1
                await asyncio.sleep(0.1)
        raise AssertionError(f"{m.event_id} never stored")

    async def kill_leader() -> None:
        nonlocal stored_at_kill
        await quarter.wait()
        stored_at_kill = len(done)
        leader.kill()

    sem = asyncio.Semaphore(16)

    async def one(m) -> None:
        async with sem:
            await publish(m)
            await asyncio.sleep(0.005)

    await asyncio.gather(kill_leader(), *(one(m) for m in msgs))
    assert leader.proc.poll() is not None and stored_at_kill < N  # it died mid-burst
    stored = await _all_event_ids(bus, "corral.evt.sandbox.>")
    assert sorted(stored) == sorted(m.event_id for m in msgs), (len(stored), retries)
    info = await bus.jetstream.stream_info("CORRAL_SANDBOX")
    assert info.state.messages == N and info.config.num_replicas == 3
    await bus.close()


def cluster_of_names(nodes) -> list[str]:
    return [n.cluster.server_name for n in nodes]


async def _all_event_ids(bus: Bus, subject: str) -> list[str]:
    for attempt in range(30):  # a consumer needs the stream's new leader: retry as readers do
        try:
            sub = await bus.jetstream.subscribe(subject, ordered_consumer=True)
            break
        except (NatsTimeout, APIError):
            assert attempt < 29, "no consumer on the stream after the kill"
            await asyncio.sleep(1)
    out = []
    with contextlib.suppress(NatsTimeout):
        while True:
            m = await sub.next_msg(timeout=2)
            out.append(m.headers["Nats-Msg-Id"])
    await sub.unsubscribe()
    return out

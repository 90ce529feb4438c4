"""Scheduler use cases on a real (SQLite) event store."""
import json
import uuid

import pytest

from common.eventstore import store_env
from contracts.commands import StartSandbox
from contracts import parse_message
from contracts.host import HostCapacity, HostHeartbeat, HostRegistered, HostRevoked
from contracts.sandbox import (SandboxDestroyed, SandboxDestroyRequested, SandboxRequested,
                               SandboxSpec)
from contracts.subjects import host_fact_subject
from services.scheduler.application.scheduler import NoCapacity, Scheduler, WrongSource

pytestmark = pytest.mark.unit


def hb(host_id: str, vcpus: int = 4, mem: int = 1024, n: int = 10) -> HostHeartbeat:
    return HostHeartbeat(op_id="op", host_id=host_id, seq=0, accel="fake",
                         capacity=HostCapacity(vcpus=vcpus, memory_mib=mem, max_sandboxes=n),
                         running=0, used_vcpus=0, used_memory_mib=0, interval_s=1)


def reg(host_id: str, vcpus: int = 4, mem: int = 1024, n: int = 10) -> HostRegistered:
    return HostRegistered(op_id="op", host_id=host_id, hostname=host_id, accel="fake",
                          capacity=HostCapacity(vcpus=vcpus, memory_mib=mem, max_sandboxes=n),
                          agent_version="0")


def req(vcpus: int = 1, mem: int = 256) -> SandboxRequested:
    return SandboxRequested(op_id="op", org_id="org1", sandbox_id=str(uuid.uuid4()),
                            spec=SandboxSpec(vcpus=vcpus, memory_mib=mem), request_hash="h")


@pytest.fixture
def app(tmp_path):
    a = Scheduler(store_env("sqlite", tmp_path, "scheduler"))
    yield a
    a.close()


def published(app: Scheduler) -> list[dict]:
    return [json.loads(n.state)["envelope"] for n in app.recorder.select_notifications(0, 1000)
            if json.loads(n.state).get("envelope")]


def test_a_heartbeat_alone_makes_no_host_and_refreshes_a_registered_one(app):
    assert app.register(hb("h1")) is False and app.host("h1") is None
    assert not app.accepts_heartbeats("h1")
    assert app.register(reg("h1")) is True and app.accepts_heartbeats("h1")
    assert app.register(hb("h1")) is True  # its heartbeat interval, recorded once
    assert app.host("h1").heartbeat_interval == 1.0
    assert app.register(hb("h1")) is False  # unchanged heartbeat stores nothing
    assert app.register(hb("h1", vcpus=8)) is True
    assert app.host("h1").capacity["vcpus"] == 8


def test_a_revoked_host_loses_its_sandboxes_and_is_never_placed_on_again(app):
    app.register(reg("h1"))
    placed, _ = app.place(req(), ["h1"])
    revoked = HostRevoked(op_id="op-r", host_id="h1", reason="stolen token")
    assert app.revoke(revoked) == [placed.sandbox_id]
    assert app.revoke(revoked) == []  # exactly once
    lost = [e for e in published(app) if e["type"] == "SandboxLost"]
    assert [e["sandbox_id"] for e in lost] == [placed.sandbox_id]
    assert "revoked" in lost[0]["reason"]
    assert app.host("h1").display_status == "revoked" and not app.accepts_heartbeats("h1")
    assert app.register(reg("h1")) is False and app.register(hb("h1", vcpus=9)) is False
    with pytest.raises(NoCapacity):
        app.place(req(), ["h1"])


def test_a_host_report_counts_only_from_the_placement_host(app):
    app.register(reg("h1"))
    app.register(reg("h2"))
    placed, _ = app.place(req(), ["h1"])
    ids = dict(op_id="op", org_id="org1", sandbox_id=placed.sandbox_id)
    forged = parse_message(SandboxDestroyed(host_id="h2", **ids).to_json(),
                           subject=host_fact_subject("h2", "org1", placed.sandbox_id,
                                                     "SandboxDestroyed"))
    with pytest.raises(WrongSource):
        app.host_reported(forged)
    assert placed.sandbox_id in app.host("h1").allocations
    real = parse_message(SandboxDestroyed(host_id="h1", **ids).to_json(),
                         subject=host_fact_subject("h1", "org1", placed.sandbox_id,
                                                   "SandboxDestroyed"))
    app.host_reported(real)
    assert placed.sandbox_id not in app.host("h1").allocations


def test_place_emits_scheduled_then_command_once(app):
    app.register(reg("h1"))
    r = req()
    p1, new1 = app.place(r, ["h1"])
    p2, new2 = app.place(r, ["h1"])  # redelivery
    assert p1.id == p2.id and p1.host_id == "h1" and new1 and not new2
    types = [e["type"] for e in published(app)]
    assert types == ["SandboxScheduled", "StartSandbox"]
    start = StartSandbox.model_validate(published(app)[1])
    assert start.host_id == "h1" and start.sandbox_id == r.sandbox_id


def test_capacity_is_respected_and_least_loaded_wins(app):
    app.register(reg("h1", vcpus=2, mem=512))
    app.register(reg("h2", vcpus=2, mem=512))
    hosts = [app.place(req(mem=256), ["h1", "h2"])[0].host_id for _ in range(4)]
    assert sorted(hosts) == ["h1", "h1", "h2", "h2"]
    with pytest.raises(NoCapacity):
        app.place(req(mem=256), ["h1", "h2"])


def test_dead_hosts_are_not_candidates(app):
    app.register(reg("h1"))
    with pytest.raises(NoCapacity):
        app.place(req(), [])


def test_destroy_before_placement_cancels_and_placement_never_happens(app):
    app.register(reg("h1"))
    r = req()
    app.route_intent(SandboxDestroyRequested(op_id="op", org_id="org1", sandbox_id=r.sandbox_id))
    p, new = app.place(r, ["h1"])
    assert p.status == "cancelled" and not new and p.host_id is None
    assert [e["type"] for e in published(app)] == ["SandboxDestroyed"]


def test_destroy_routes_to_host_and_release_frees_capacity(app):
    app.register(reg("h1", vcpus=1, mem=256, n=1))
    r = req()
    app.place(r, ["h1"])
    d = SandboxDestroyRequested(op_id="op", org_id="org1", sandbox_id=r.sandbox_id)
    app.route_intent(d)
    app.route_intent(d)  # duplicate: one command only
    assert [e["type"] for e in published(app)].count("DestroySandbox") == 1
    with pytest.raises(NoCapacity):
        app.place(req(), ["h1"])
    app.host_reported(SandboxDestroyed(op_id="op", org_id="org1", sandbox_id=r.sandbox_id,
                                       host_id="h1"))
    assert app.place(req(), ["h1"])[0].host_id == "h1"


def test_lost_host_loses_its_sandboxes_exactly_once(app):
    app.register(HostRegistered(op_id="op", host_id="h1", hostname="a", accel="fake",
                                capacity=HostCapacity(vcpus=4, memory_mib=1024, max_sandboxes=4),
                                agent_version="t"))
    a, b = req(), req()
    app.place(a, ["h1"])
    app.place(b, ["h1"])
    assert sorted(app.mark_lost("h1", 3.0, "op")) == sorted([a.sandbox_id, b.sandbox_id])
    assert app.mark_lost("h1", 3.0, "op") == []
    types = [e["type"] for e in published(app)]
    assert types.count("HostLost") == 1 and types.count("SandboxLost") == 2
    # destroying a lost sandbox needs no host
    app.route_intent(SandboxDestroyRequested(op_id="op", org_id="org1", sandbox_id=a.sandbox_id))
    assert [e["type"] for e in published(app)][-1] == "SandboxDestroyed"
    assert app.register(reg("h1")) is True and app.host("h1").status == "ready"


def test_each_intent_routed_once_and_restart_reallocates(app):
    from contracts.sandbox import SandboxStartRequested, SandboxStopped, SandboxStopRequested
    app.register(reg("h1", vcpus=1, mem=256, n=1))
    r = req()
    app.place(r, ["h1"])
    ids = dict(op_id="op", org_id="org1", sandbox_id=r.sandbox_id)
    stop1 = SandboxStopRequested(**ids)
    app.route_intent(stop1)
    app.route_intent(stop1)  # redelivery
    app.host_reported(SandboxStopped(host_id="h1", **ids))
    assert app.host("h1").allocations == {}  # stopped: capacity free
    app.route_intent(SandboxStartRequested(**ids))
    assert r.sandbox_id in app.host("h1").allocations
    app.route_intent(SandboxStopRequested(**ids))  # a second stop, a new intent
    cmds = [e for e in published(app) if e["type"] in ("StopSandbox", "StartSandbox")]
    assert [c["type"] for c in cmds] == ["StartSandbox", "StopSandbox", "StartSandbox",
                                         "StopSandbox"]
    assert cmds[2]["restart"] is True and cmds[0]["restart"] is False


def test_host_aggregate_loads_from_snapshots(app):
    from contracts.sandbox import SandboxDestroyed
    from services.scheduler.domain.host import host_uuid
    app.register(reg("h1", vcpus=1, mem=256, n=1))
    for _ in range(60):  # allocate + release: 120+ events on one host
        r = req()
        app.place(r, ["h1"])
        app.host_reported(SandboxDestroyed(op_id="op", org_id="org1", sandbox_id=r.sandbox_id,
                                           host_id="h1"))
    snap = list(app.snapshots.get(host_uuid("h1"), desc=True, limit=1))
    assert snap and snap[0].originator_version >= 100
    assert app.host("h1").allocations == {} and app.host("h1").fits(1, 256)


def test_placement_from_stale_summaries_is_checked_on_the_host_itself(tmp_path):
    """Two scheduler instances on one store: each keeps host summaries as it
    last read them. A pick that no longer fits (the other instance filled
    the host) is checked on the host and the next host is taken; when the
    summaries say nothing fits but a host was freed meanwhile, they are read
    afresh and the placement succeeds."""
    env = store_env("sqlite", tmp_path, "scheduler")
    a, b = Scheduler(env), Scheduler(env)
    try:
        for h in ("h1", "h2"):
            a.register(reg(h, n=1))
        alive = ["h1", "h2"]
        on_h1 = b.place(req(), alive)[0]  # b reads both hosts: empty
        assert on_h1.host_id == "h1"
        assert a.place(req(), alive)[0].host_id == "h2"  # a's summaries are fresh: h1 full
        with pytest.raises(NoCapacity):  # b believes h2 empty: checked, full; re-read: full
            b.place(req(), alive)
        done = parse_message(SandboxDestroyed(op_id="op", org_id="org1",
                                              sandbox_id=on_h1.sandbox_id,
                                              host_id="h1").to_json(),
                             subject=host_fact_subject("h1", "org1", on_h1.sandbox_id,
                                                       "SandboxDestroyed"))
        a.host_reported(done)  # a frees h1; b's summary of h1 still says full
        assert b.place(req(), alive)[0].host_id == "h1"  # read afresh, placed
    finally:
        a.close()
        b.close()

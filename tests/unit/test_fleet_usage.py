"""Fleet administration (cordon / drain / uncordon, host listing) and the usage
projection (range, overlap, pagination, restarts, two instances)."""
from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from common.eventstore import store_env
from common.rpc import answer
from common.sqldb import decode_cursor
from contracts import rpc
from contracts.host import HostCapacity, HostHeartbeat, HostRegistered
from contracts.sandbox import SandboxDestroyed, SandboxRequested, SandboxSpec, SandboxStarted
from services.billing.adapters.usage_index import UsageIndex
from services.billing.application.metering import Metering
from services.billing.application.spend import Spend
from services.billing.application.usage import UsageQueries
from services.billing.entrypoints.rpc import MAX_REQUEST as USAGE_MAX_REQUEST
from services.billing.entrypoints.rpc import _refuse as usage_refuse
from services.scheduler.application.fleet import Fleet, UnknownHost
from services.scheduler.application.liveness import Liveness
from services.scheduler.application.scheduler import NoCapacity, Scheduler
from services.scheduler.domain.host import Host
from services.scheduler.entrypoints.rpc import MAX_REQUEST, _refuse, host_info

pytestmark = pytest.mark.unit
CAP = {"vcpus": 4, "memory_mib": 1024, "max_sandboxes": 10}
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


# --- Host aggregate -----------------------------------------------------------

def test_cordon_drain_uncordon_are_idempotent_and_block_placement():
    h = Host("h1", "node1", CAP, "kvm")
    assert h.fits(1, 256) and h.display_status == "ready"
    assert h.cordon() is True and h.cordon() is False
    assert not h.fits(1, 256) and h.display_status == "cordoned"
    assert h.drain() is True and h.drain() is False
    assert h.cordon() is False and h.display_status == "draining"  # drain is kept
    assert h.uncordon() is True and h.uncordon() is False
    assert h.fits(1, 256) and h.display_status == "ready"
    kinds = [type(e).__name__ for e in h.collect_events()]
    assert kinds == ["Registered", "SchedulingSet", "SchedulingSet", "SchedulingSet"]


def test_cordon_survives_loss_and_return_and_loss_still_applies():
    h = Host("h1", "node1", CAP, "kvm")
    h.allocate("sb1", "org1", 1, 256)
    h.cordon()
    h.mark_lost({"type": "HostLost"})
    assert h.display_status == "lost" and not h.fits(1, 1)
    h.mark_back()
    assert h.display_status == "cordoned" and not h.fits(1, 1)


# --- scheduler store: placement, persistence, listing ------------------------

def reg(host_id: str) -> HostRegistered:
    return HostRegistered(op_id="op", host_id=host_id, hostname=host_id, accel="fake",
                          capacity=HostCapacity(**CAP), agent_version="0")


def hb(host_id: str) -> HostHeartbeat:
    return HostHeartbeat(op_id="op", host_id=host_id, seq=0, accel="fake",
                         capacity=HostCapacity(**CAP), running=0, used_vcpus=0,
                         used_memory_mib=0, interval_s=1)


def req() -> SandboxRequested:
    return SandboxRequested(op_id="op", org_id="org1", sandbox_id=str(uuid.uuid4()),
                            spec=SandboxSpec(vcpus=1, memory_mib=256), request_hash="h")


@pytest.fixture
def sched(tmp_path):
    apps = []

    def make() -> Scheduler:
        a = Scheduler(store_env("sqlite", tmp_path, "scheduler"))
        apps.append(a)
        return a
    yield make
    for a in apps:
        a.close()


def test_placement_skips_cordoned_hosts_until_uncordoned(sched):
    app = sched()
    fleet = Fleet(app)
    app.register(reg("h1"))
    app.register(reg("h2"))
    h, changed = fleet.cordon("h1")
    assert changed and h.scheduling == "cordoned" == app.host("h1").scheduling
    for _ in range(3):
        p, _ = app.place(req(), ["h1", "h2"])
        assert p.host_id == "h2"
    fleet.drain("h2")
    with pytest.raises(NoCapacity):
        app.place(req(), ["h1", "h2"])
    h, changed = fleet.uncordon("h1")
    assert changed and h.scheduling == "open"
    assert app.place(req(), ["h1", "h2"])[0].host_id == "h1"


def test_cordon_is_stored_and_seen_by_another_instance_and_after_restart(sched):
    a, b = sched(), sched()  # two scheduler instances on one store
    a.register(reg("h1"))
    _, changed = Fleet(a).cordon("h1")
    assert changed
    assert b.host("h1").scheduling == "cordoned"
    with pytest.raises(NoCapacity):
        b.place(req(), ["h1"])
    assert Fleet(b).cordon("h1")[1] is False  # idempotent, from the other instance too
    a.close()
    assert sched().host("h1").display_status == "cordoned"  # a restarted instance


def test_lost_cordoned_host_still_loses_its_sandboxes(sched):
    app = sched()
    app.register(reg("h1"))
    p, _ = app.place(req(), ["h1"])
    Fleet(app).drain("h1")
    assert app.mark_lost("h1", 3.0, "op") == [p.sandbox_id]
    assert app.host("h1").display_status == "lost"
    app.register(hb("h1"))  # a heartbeat: back
    assert app.host("h1").display_status == "draining"


def test_fleet_lists_every_recorded_host_from_any_instance(sched):
    a, b = sched(), sched()
    a.register(reg("h2"))
    fleet = Fleet(b)
    assert [h.host_id for h in fleet.hosts()] == ["h2"]
    a.register(reg("h1"))
    a.mark_lost("h2", 3.0, "op")  # lost hosts are listed too
    assert [(h.host_id, h.display_status) for h in fleet.hosts()] == [("h1", "ready"),
                                                                      ("h2", "lost")]
    with pytest.raises(UnknownHost):
        fleet.cordon("nope")


def test_host_info_and_rpc_errors(sched):
    app = sched()
    app.register(reg("h1"))
    app.place(req(), ["h1"])
    now = [100.0]
    live = Liveness(3, clock=lambda: now[0])
    live.beat("h1", 1.0)
    now[0] = 101.5
    info = host_info(app.host("h1"), set(live.alive()), live)
    assert info.alive and info.last_heartbeat_age_s == 1.5 and info.status == "ready"
    assert info.capacity == rpc.HostResources(vcpus=4, memory_mib=1024, sandboxes=10)
    assert info.used == rpc.HostResources(vcpus=1, memory_mib=256, sandboxes=1)
    fleet = Fleet(app)

    async def drain(r: rpc.HostAction):
        h, _ = await asyncio.to_thread(fleet.drain, r.host_id)
        return rpc.HostList(items=[host_info(h, set(), live)])
    missing = asyncio.run(answer(b'{"host_id": "nope"}', rpc.HostAction, drain, MAX_REQUEST, _refuse))
    assert isinstance(missing, rpc.RpcError) and missing.error == "not_found"
    bad = asyncio.run(answer(b'{"host_id": "a.b"}', rpc.HostAction, drain, MAX_REQUEST, _refuse))
    assert isinstance(bad, rpc.RpcError) and bad.error == "invalid"
    ok = asyncio.run(answer(b'{"host_id": "h1"}', rpc.HostAction, drain, MAX_REQUEST, _refuse))
    assert ok.items[0].status == "draining" and not ok.items[0].alive


# --- usage query contract ---------------------------------------------------------

def q(**kw) -> dict:
    return {"org_id": "org1", "from": T0.isoformat(), "to": (T0 + timedelta(days=1)).isoformat(),
            **kw}


@pytest.mark.parametrize("bad", [
    {"to": T0.isoformat()},  # empty range
    {"to": (T0 - timedelta(seconds=1)).isoformat()},  # reversed
    {"to": (T0 + timedelta(days=400, seconds=1)).isoformat()},  # too long
    {"from": "2026-03-01T12:00:00"},  # no offset
    {"from": "yesterday"},
    {"limit": 0}, {"limit": 501},
    {"org_id": "a.b"},
    {"extra": 1},
])
def test_usage_query_rejects_bad_input(bad):
    with pytest.raises(ValidationError):
        rpc.UsageQuery.model_validate(q(**bad))


def test_usage_query_wire_format_uses_from():
    ok = rpc.UsageQuery.model_validate(q(to=(T0 + timedelta(days=400)).isoformat()))
    doc = json.loads(ok.model_dump_json())
    assert doc["from"] == "2026-03-01T12:00:00Z" and "from_" not in doc
    assert rpc.UsageQuery.model_validate_json(ok.model_dump_json()) == ok


# --- usage projection ---------------------------------------------------------------

def _run(app: Metering, sid: str, org: str, start_s: float, end_s: float, vcpus: int = 2) -> None:
    app.clock = lambda: T0 + timedelta(seconds=start_s)  # observed as it happens
    app.observe(SandboxStarted(op_id="op", org_id=org, sandbox_id=sid, host_id="h1", vcpus=vcpus,
                               memory_mib=512, accel="kvm",
                               occurred_at=T0 + timedelta(seconds=start_s)))
    app.clock = lambda: T0 + timedelta(seconds=end_s)
    app.observe(SandboxDestroyed(op_id="op", org_id=org, sandbox_id=sid,
                                 occurred_at=T0 + timedelta(seconds=end_s)))


@pytest.fixture
def billing(tmp_path):
    app = Metering(env=store_env("sqlite", tmp_path, "billing"), period_s=600, grace_s=0)
    indexes = []

    def index() -> UsageIndex:
        ix = UsageIndex("sqlite", str(tmp_path / "billing-usage.sqlite"))
        ix.create()
        indexes.append(ix)
        return ix
    yield app, index
    for ix in indexes:
        ix.close()
    app.close()


def _all(ix: UsageIndex, org: str, start: datetime, end: datetime, limit: int) -> list[dict]:
    out, cursor = [], None
    while True:
        page, cursor = ix.page(org, start, end, limit, cursor)
        assert len(page) <= limit
        out += page
        if cursor is None:
            return out


def test_usage_items_overlapping_the_range_oldest_first_paginated(billing):
    app, index = billing
    _run(app, "sb-a", "org1", 0, 1500)  # periods [0,600) [600,1200) [1200,1500)
    _run(app, "sb-b", "org1", 100, 700)  # [100,700)
    _run(app, "sb-c", "org2", 0, 100)
    ix = index()
    ix.catch_up_all(app.recorder)
    every = _all(ix, "org1", T0, T0 + timedelta(days=1), 2)
    assert [(i["sandbox_id"], (i["period_start"] - T0).total_seconds()) for i in every] == [
        ("sb-a", 0), ("sb-b", 100), ("sb-a", 600), ("sb-a", 1200)]
    a0 = every[0]
    assert a0["vcpu_seconds"] == 1200 and a0["memory_mib_seconds"] == 512 * 600
    assert a0["period_end"] == T0 + timedelta(seconds=600)
    assert len({i["event_id"] for i in every}) == 4
    for limit in (1, 3, 500):
        assert _all(ix, "org1", T0, T0 + timedelta(days=1), limit) == every
    # overlap with [from, to): touching the end of a period is not overlapping
    def at(s: float) -> datetime:
        return T0 + timedelta(seconds=s)
    got = ix.page("org1", at(600), at(1200), 100, None)[0]
    assert [(i["sandbox_id"], (i["period_start"] - T0).total_seconds()) for i in got] == [
        ("sb-b", 100), ("sb-a", 600)]
    assert ix.page("org1", at(1500), at(9999), 100, None) == ([], None)
    assert ix.page("org2", T0, at(9999), 100, None)[0][0]["sandbox_id"] == "sb-c"
    assert ix.page("org3", T0, at(9999), 100, None) == ([], None)
    with pytest.raises(ValueError):
        ix.page("org1", T0, at(9999), 10, "not-a-cursor")
    with pytest.raises(ValueError):
        decode_cursor("WyJ4IiwgMV0", (int, str))  # ["x", 1]: not a usage key


def test_projection_survives_restarts_and_two_instances_never_duplicate(billing):
    app, index = billing
    _run(app, "sb-a", "org1", 0, 1500)
    a, b = index(), index()
    a.catch_up_all(app.recorder)
    b.catch_up_all(app.recorder)  # same cursor: nothing projected twice
    _run(app, "sb-b", "org1", 2000, 2100)
    b.catch_up_all(app.recorder)
    a.catch_up_all(app.recorder)
    pos = a.position()
    a.close()
    restarted = index()
    assert restarted.position() == pos and restarted.catch_up(app.recorder) == 0
    items = _all(restarted, "org1", T0, T0 + timedelta(days=1), 500)
    assert [i["sandbox_id"] for i in items] == ["sb-a", "sb-a", "sb-a", "sb-b"]


async def usage_reply(queries: UsageQueries, body: bytes) -> rpc.RpcModel:
    """The billing RPC's answer to one request body."""
    reply = await answer(body, rpc.UsageQuery, queries.page, USAGE_MAX_REQUEST, usage_refuse)
    assert isinstance(reply, rpc.RpcModel)
    return reply


def test_usage_reply_catches_up_and_validates(billing):
    app, index = billing
    ix = index()
    _run(app, "sb-a", "org1", 0, 300)  # recorded, not projected yet

    def ask(**kw) -> rpc.RpcModel:
        return asyncio.run(usage_reply(UsageQueries(ix, app, Spend(app, ix)), json.dumps(q(**kw)).encode()))
    page = ask()
    assert isinstance(page, rpc.UsagePage) and page.next_cursor is None
    assert [(i.sandbox_id, i.vcpu_seconds) for i in page.items] == [("sb-a", 600)]
    assert ask(org_id="org2").items == []
    for bad in ({"to": T0.isoformat()}, {"cursor": "%%%"}):
        err = ask(**bad)
        assert isinstance(err, rpc.RpcError) and err.error == "invalid"
    big = asyncio.run(usage_reply(UsageQueries(ix, app, Spend(app, ix)), b"x" * 10000))
    assert isinstance(big, rpc.RpcError) and big.error == "invalid"

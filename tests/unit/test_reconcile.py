"""Anti-entropy: a host's inventory against the scheduler's view (real store)."""
import json
import uuid

import pytest

from common.eventstore import store_env
from contracts.host import HostInventory, InventoryItem
from contracts.image import ImageBuildRequested
from contracts.sandbox import (SandboxDestroyed, SandboxDestroyRequested)
from services.scheduler.application import reconcile
from services.scheduler.application.scheduler import Scheduler

from .test_scheduler_app import hb, reg, req

pytestmark = pytest.mark.unit


class Clock:
    t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(reconcile.time, "monotonic", c)
    return c


@pytest.fixture
def app(tmp_path, clock):
    a = Scheduler(store_env("sqlite", tmp_path, "scheduler"))
    a.confirm_s = 0.0  # one sighting confirms, unless a test says otherwise
    a.min_gap_s = 0.0
    a.register(reg("h1", vcpus=4, n=4))
    a.register(hb("h1", vcpus=4, n=4))
    yield a
    a.close()


def envelopes(app: Scheduler, start: int = 0) -> list[dict]:
    out = []
    for n in app.recorder.select_notifications(start, 10000, inclusive_of_start=False):
        env = json.loads(n.state).get("envelope")
        if env:
            out.append(env)
    return out


def position(app: Scheduler) -> int:
    return app.recorder.max_notification_id() or 0


def inv(*items: tuple[str, str], builds=(), host="h1", pending=0) -> HostInventory:
    return HostInventory(op_id="op-inv", host_id=host, builds=list(builds),
                         commands_pending=pending, sandboxes=[
        InventoryItem(sandbox_id=sid, org_id="org1", state=state) for sid, state in items])


def place(app: Scheduler, n: int) -> list[str]:
    return [app.place(req(), ["h1"])[0].sandbox_id for _ in range(n)]


def lose_and_return(app: Scheduler) -> None:
    app.mark_lost("h1", 6.0, "op-sweep")
    assert app.host("h1").status == "lost"
    assert app.register(hb("h1", vcpus=4, n=4)) is True  # heartbeats again: back
    assert app.host("h1").status == "ready"


def test_a_lost_host_keeps_its_capacity_unknown_until_its_inventory_settles_it(app):
    a, b = place(app, 2)
    assert sorted(app.mark_lost("h1", 6.0, "op")) == sorted([a, b])
    h = app.host("h1")
    assert set(h.allocations) == {a, b} and set(h.unknown_ids) == {a, b}
    assert app.mark_lost("h1", 6.0, "op") == []  # once
    app.register(hb("h1", vcpus=4, n=4))
    assert app.host("h1").used_vcpus == 2  # back, but its ghosts still count
    assert app.reconcile(inv(host="h1")) is not None
    assert app.host("h1").used_vcpus == 0 and app.host("h1").unknown_ids == []


def test_a_returning_host_gets_what_it_runs_adopted_and_the_rest_released(app):
    a, b = place(app, 2)
    lose_and_return(app)
    lost_at = next(e for e in envelopes(app) if e["type"] == "HostLost")["occurred_at"]
    pos = position(app)
    done = app.reconcile(inv((a, "running")))
    assert done.adopted == [a] and done.released == [b] and done.lost == []
    out = envelopes(app, pos)
    rec = [e for e in out if e["type"] == "SandboxRecovered"]
    assert len(rec) == 1 and rec[0]["sandbox_id"] == a and rec[0]["state"] == "running"
    assert rec[0]["lost_at"][:19] == lost_at[:19] and rec[0]["vcpus"] == 1
    assert [e["type"] for e in out if e["type"] == "HostReconciled"] == ["HostReconciled"]
    h = app.host("h1")
    assert set(h.allocations) == {a} and h.unknown_ids == []
    # the same inventory again (redelivery) changes nothing
    assert app.reconcile(inv((a, "running"))) is None


def test_destroy_policy_destroys_what_was_lost_and_keeps_its_capacity_until_done(app):
    app.lost_policy = "destroy"
    (a,) = place(app, 1)
    lose_and_return(app)
    pos = position(app)
    done = app.reconcile(inv((a, "running")))
    assert done.destroyed == [a] and done.adopted == []
    cmds = [e for e in envelopes(app, pos) if e["type"] == "DestroySandbox"]
    assert [c["sandbox_id"] for c in cmds] == [a] and cmds[0]["host_id"] == "h1"
    assert app.placement(a).status == "destroyed"
    assert a in app.host("h1").allocations  # until the host says it is gone
    app.host_reported(SandboxDestroyed(op_id="op", org_id="org1", sandbox_id=a,
                                       host_id="h1"))
    assert app.host("h1").allocations == {}


def test_destroyed_by_its_user_while_lost_is_destroyed_when_its_host_returns(app):
    (a,) = place(app, 1)
    app.mark_lost("h1", 6.0, "op")
    app.route_intent(SandboxDestroyRequested(op_id="op", org_id="org1", sandbox_id=a))
    assert app.placement(a).status == "destroyed"
    assert a in app.host("h1").allocations  # it may still run: not handed out
    app.register(hb("h1", vcpus=4, n=4))
    pos = position(app)
    done = app.reconcile(inv((a, "running")))
    assert done.destroyed == [a]
    assert [e["type"] for e in envelopes(app, pos)].count("DestroySandbox") == 1


def test_an_inventory_of_a_lost_host_waits_until_it_is_back(app):
    place(app, 1)
    app.mark_lost("h1", 6.0, "op")
    assert app.reconcile(inv()) is None
    assert app.host("h1").unknown_ids


def test_what_a_fact_in_flight_could_explain_is_acted_on_only_when_seen_again(app, clock):
    app.confirm_s, app.missing_grace_s = 5.0, 0.0
    a, b = place(app, 2)
    stray = str(uuid.uuid4())
    assert app.reconcile(inv((a, "running"), (stray, "running"))) is None  # suspected
    clock.t += 1
    assert app.reconcile(inv((a, "running"), (stray, "running"))) is None  # too soon
    clock.t += 5
    pos = position(app)
    done = app.reconcile(inv((a, "running"), (stray, "running")))
    assert done.destroyed == [stray] and done.lost == [b]
    out = envelopes(app, pos)
    assert [e["sandbox_id"] for e in out if e["type"] == "DestroySandbox"] == [stray]
    lost = [e for e in out if e["type"] == "SandboxLost"]
    assert [e["sandbox_id"] for e in lost] == [b] and "does not run it" in lost[0]["reason"]
    assert set(app.host("h1").allocations) == {a}
    # b turns up after all (its start was late): adopted back, from when it was lost
    done = app.reconcile(inv((a, "running"), (b, "starting")))
    assert done.adopted == [b]
    rec = [e for e in envelopes(app, pos) if e["type"] == "SandboxRecovered"]
    assert rec[0]["state"] == "starting" and rec[0]["lost_at"] == lost[0]["occurred_at"]


def test_a_discrepancy_that_goes_away_is_forgotten(app, clock):
    app.confirm_s, app.missing_grace_s = 5.0, 0.0
    (a,) = place(app, 1)
    assert app.reconcile(inv()) is None  # a missing: suspected
    clock.t += 3
    assert app.reconcile(inv((a, "running"))) is None  # there after all
    clock.t += 3
    assert app.reconcile(inv()) is None  # suspected afresh, not confirmed
    assert a in app.host("h1").allocations


def test_young_placements_are_never_missing(app, clock):
    app.confirm_s, app.missing_grace_s = 0.0, 60.0
    place(app, 1)
    clock.t += 100
    assert app.reconcile(inv()) is None


def test_builds_of_a_lost_host_are_released_when_it_no_longer_builds_them(app):
    r = ImageBuildRequested(op_id="op", org_id="org1", image_id="img-1", name="x",
                            source="dockerfile", context_sha256="0" * 64, context_bytes=1,
                            vcpus=1, memory_mib=256)
    app.place_build(r, ["h1"])
    lose_and_return(app)
    assert app.reconcile(inv(builds=["img-1"])) is None  # still building: kept
    assert "img-1" in app.host("h1").allocations
    done = app.reconcile(inv())
    assert done.released == ["img-1"] and app.host("h1").allocations == {}


@pytest.mark.parametrize("pending", [3, None])
def test_absence_counts_only_when_no_command_is_pending_for_the_host(app, pending):
    """A start still queued for the host is not in its inventory yet: such an
    inventory says nothing about what it lacks."""
    app.missing_grace_s = 0.0
    a, b = place(app, 2)
    assert app.reconcile(inv((a, "running"), pending=pending)) is None
    assert set(app.host("h1").allocations) == {a, b}
    lose_and_return(app)
    assert app.reconcile(inv((a, "running"), pending=pending)).adopted == [a]
    assert b in app.host("h1").allocations and b in app.host("h1").unknown_ids
    assert app.reconcile(inv((a, "running"), pending=0)).released == [b]


def test_a_lost_sandbox_released_then_started_by_its_host_is_adopted(app):
    (a,) = place(app, 1)
    lose_and_return(app)
    lost_at = next(e for e in envelopes(app) if e["type"] == "HostLost")["occurred_at"]
    assert app.reconcile(inv()).released == [a]  # its start had not reached the host
    assert app.host("h1").allocations == {}
    pos = position(app)
    assert app.reconcile(inv((a, "running"))).adopted == [a]  # it started after all
    rec = [e for e in envelopes(app, pos) if e["type"] == "SandboxRecovered"]
    assert len(rec) == 1 and rec[0]["lost_at"][:19] == lost_at[:19]
    assert [e["type"] for e in envelopes(app, pos)].count("SandboxLost") == 0
    assert a in app.host("h1").allocations


def test_a_host_sending_inventories_faster_than_the_gap_gets_them_skipped(app, clock):
    app.min_gap_s = 1.0
    place(app, 1)
    lose_and_return(app)
    assert app.reconcile(inv()) is not None  # taken up: its sandbox released
    place(app, 1)
    lose_and_return(app)
    clock.t += 0.5
    assert app.reconcile(inv()) is None  # too soon after the last one: skipped
    assert app.host("h1").unknown_ids
    clock.t += 0.6
    assert app.reconcile(inv()) is not None

"""Meter: run time -> usage periods with stable ids; idempotent; injected clock."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from contracts.sandbox import (Failure, SandboxDestroyed, SandboxFailed, SandboxLost,
                               SandboxRecovered, SandboxStarted, SandboxStopped)
from services.billing.application.metering import Metering
from services.billing.domain.meter import Meter, OrgMismatch, ts, usage_event_id

pytestmark = pytest.mark.unit
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SB, ORG = "sb-1", "org-1"


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def started(s: float, vcpus: int = 2, mem: int = 512, **kw) -> dict:
    return SandboxStarted(op_id="op-start", org_id=kw.pop("org", ORG), sandbox_id=SB,
                          host_id="h1", vcpus=vcpus, memory_mib=mem, accel="kvm",
                          occurred_at=at(s), **kw).model_dump(mode="json")


def stopped(s: float, **kw) -> dict:
    return SandboxStopped(op_id="op-stop", org_id=ORG, sandbox_id=SB, occurred_at=at(s),
                          **kw).model_dump(mode="json")


def destroyed(s: float) -> dict:
    return SandboxDestroyed(op_id="op-d", org_id=ORG, sandbox_id=SB,
                            occurred_at=at(s)).model_dump(mode="json")


def meter() -> Meter:
    return Meter(SB, ORG)


def test_one_run_is_one_usage_item():
    m = meter()
    assert m.observe(started(0))
    assert m.cut(at(5000), period_s=0) == []  # no periods: bill at the end only
    assert m.observe(stopped(90))
    [u] = m.cut(at(100), period_s=0)
    assert (u.vcpu_seconds, u.memory_mib_seconds) == (180.0, 512 * 90.0)
    assert (u.period_start, u.period_end) == (at(0), at(90))
    assert u.event_id == usage_event_id(SB, at(0)) and u.org_id == ORG and u.host_id == "h1"
    assert u.op_id == "op-stop" and not m.running


def test_duplicates_and_second_end_fact_add_nothing():
    m = meter()
    s, e = started(0), stopped(60)
    m.observe(s)
    m.observe(e)
    assert len(m.cut(at(61), 0)) == 1
    assert not m.observe(s) and not m.observe(e)
    assert m.observe(destroyed(70))  # a new fact, but the run is already billed
    assert m.cut(at(100), 0) == [] and len(m.usage_ids) == 1


def test_end_before_start_pairs_when_start_arrives():
    m = meter()
    m.observe(stopped(30))
    assert m.cut(at(40), 0) == []
    m.observe(started(10, vcpus=1))
    [u] = m.cut(at(40), 0)
    assert (u.period_start, u.period_end, u.vcpu_seconds) == (at(10), at(30), 20.0)


def test_failed_without_start_bills_nothing():
    m = meter()
    m.observe(SandboxFailed(op_id="o", org_id=ORG, sandbox_id=SB, occurred_at=at(5),
                            failure=Failure(code="boot", message="x")).model_dump(mode="json"))
    assert m.cut(at(10), 3600) == [] and not m.running


def test_restart_is_a_new_run_with_its_own_id():
    m = meter()
    for f in (started(0), stopped(10), started(100), stopped(130)):
        m.observe(f)
        m.cut(at(200), 0)
    assert len(m.usage_ids) == 2
    assert m.usage_ids == [usage_event_id(SB, at(0)), usage_event_id(SB, at(100))]


def test_stale_start_after_billed_run_is_ignored():
    m = meter()
    m.observe(started(0))
    m.observe(stopped(10))
    m.cut(at(20), 0)
    m.observe(started(5) | {"event_id": "re-emitted"})
    assert not m.running and m.cut(at(100), 0) == []


def test_periodic_cuts_are_aligned_and_respect_grace():
    m = meter()
    m.observe(started(0, vcpus=1, mem=100))
    assert m.cut(at(3600 + 59), 3600, grace_s=60) == []  # period over, grace not
    [p1] = m.cut(at(3600 + 60), 3600, grace_s=60)
    assert (p1.period_start, p1.period_end, p1.vcpu_seconds) == (at(0), at(3600), 3600.0)
    assert m.cut(at(3600 + 61), 3600, grace_s=60) == []  # nothing twice
    m.observe(stopped(2 * 3600 + 1800))
    items = m.cut(at(3 * 3600), 3600, grace_s=60)
    assert [(u.period_start, u.period_end) for u in items] == [
        (at(3600), at(7200)), (at(7200), at(9000))]
    assert len(set(m.usage_ids)) == 3 and not m.running
    total = p1.vcpu_seconds + sum(u.vcpu_seconds for u in items)
    assert total == 9000.0


def test_late_end_inside_a_cut_period_adds_nothing_negative():
    m = meter()
    m.observe(started(0))
    m.cut(at(200), 100, grace_s=0)  # cuts [0,100] and [100,200]
    m.observe(stopped(150))  # bus lag: end lands in an already cut period
    assert m.cut(at(300), 100, grace_s=0) == [] and not m.running


def test_fact_from_another_org_is_refused():
    m = meter()
    m.observe(started(0))
    with pytest.raises(OrgMismatch):
        m.observe(stopped(10) | {"org_id": "other", "event_id": "x"})


def test_usage_id_is_stable_across_timezone_spellings():
    cet = timezone(timedelta(hours=1))
    assert usage_event_id(SB, at(0)) == usage_event_id(SB, at(0).astimezone(cet))
    assert usage_event_id(SB, at(0)) == usage_event_id(SB, "2026-03-01T12:00:00Z")
    assert usage_event_id(SB, at(0)) != usage_event_id("sb-2", at(0))


def test_metering_app_records_envelopes_once_and_cuts_open_runs():
    clock = [at(0)]
    app = Metering(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, period_s=600, grace_s=0,
                   clock=lambda: clock[0])
    start = SandboxStarted.model_validate(started(0))
    assert app.observe(start) == 0 and app.observe(start) == 0
    clock[0] = at(1250)
    assert app.cut_due() == 2 and app.cut_due() == 0
    stop = SandboxStopped.model_validate(stopped(1300))
    assert app.observe(stop) == 1 and app.observe(stop) == 0
    notes = app.recorder.select_notifications(1, 100)
    envs = [json.loads(n.state)["envelope"] for n in notes
            if json.loads(n.state).get("envelope")]
    assert [e["period_end"][:19] for e in envs] == [
        "2026-03-01T12:10:00", "2026-03-01T12:20:00", "2026-03-01T12:21:40"]
    assert all(e["type"] == "UsageRecorded" for e in envs)
    assert sum(e["vcpu_seconds"] for e in envs) == 2 * 1300
    clock[0] = at(99999)
    assert app.cut_due() == 0  # the run is closed: no more periods


def _via(msg, host_id):
    from contracts import parse_message
    from contracts.subjects import subject_for
    return parse_message(msg.to_json(), subject=subject_for(msg, host_id))


def test_a_snapshot_is_metered_for_storage_while_held():
    from contracts.sandbox import SandboxScheduled
    from contracts.snapshot import SnapshotCreated, SnapshotDeleted
    from services.billing.domain.meter import NotPlacedYet, WrongSource
    app = Metering(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, period_s=0, grace_s=0,
                   clock=lambda: at(10_000))
    ids = dict(op_id="op", org_id=ORG, sandbox_id=SB, snapshot_id="snap-1")
    created = SnapshotCreated(host_id="h1", image="default", vcpus=2, memory_mib=512,
                              size_bytes=600 << 20, took_ms=5, occurred_at=at(0), **ids)
    with pytest.raises(NotPlacedYet):  # the sandbox's placement names the host
        app.observe(_via(created, "h1"))
    app.observe(SandboxScheduled(op_id="op", org_id=ORG, sandbox_id=SB, host_id="h1"))
    with pytest.raises(WrongSource):  # h2 reporting on a snapshot taken on h1
        app.observe(_via(created.model_copy(update={"host_id": "h2"}), "h2"))
    assert app.observe(_via(created, "h1")) == 0
    assert app.observe(_via(created, "h1")) == 0  # redelivered
    deleted = SnapshotDeleted(host_id="h1", occurred_at=at(100), **ids)
    assert app.observe(_via(deleted, "h1")) == 1
    assert app.observe(_via(deleted, "h1")) == 0
    [env] = [json.loads(n.state)["envelope"] for n in app.recorder.select_notifications(1, 100)
             if json.loads(n.state).get("envelope")]
    assert env["storage_mib_seconds"] == 600 * 100
    assert (env["vcpu_seconds"], env["memory_mib_seconds"]) == (0, 0)  # storage, not compute
    assert env["snapshot_id"] == "snap-1" and env["sandbox_id"] == SB
    assert env["event_id"] == usage_event_id("snap/snap-1", at(0)) != usage_event_id(SB, at(0))


def test_a_sandbox_recovered_after_loss_is_billed_for_the_whole_time():
    """Lost at 100 s, adopted back at 400 s (it ran all along), destroyed at
    600 s: 600 s are billed, the gap included, in periods with distinct ids."""
    m = meter()
    m.observe(started(0))
    m.observe(SandboxLost(op_id="op-l", org_id=ORG, sandbox_id=SB, host_id="h1",
                          reason="host lost", occurred_at=at(100)).model_dump(mode="json"))
    first = m.cut(at(150), period_s=60)
    assert sum(u.vcpu_seconds for u in first) == 200.0 and not m.running
    assert m.observe(SandboxRecovered(
        op_id="op-r", org_id=ORG, sandbox_id=SB, host_id="h1", state="running",
        lost_at=at(100), vcpus=2, memory_mib=512, occurred_at=at(400)).model_dump(mode="json"))
    assert m.running and ts(m.run_start) == at(100)
    m.observe(destroyed(600))
    rest = m.cut(at(700), period_s=60)
    ids = [u.event_id for u in first + rest]
    assert len(ids) == len(set(ids))
    assert sum(u.vcpu_seconds for u in first + rest) == 2 * 600.0
    assert rest[0].period_start == at(100)


def test_a_sandbox_recovered_while_still_booting_is_billed_from_its_start():
    m = meter()
    m.observe(SandboxLost(op_id="op-l", org_id=ORG, sandbox_id=SB, host_id="h1",
                          reason="host lost", occurred_at=at(10)).model_dump(mode="json"))
    assert not m.observe(SandboxRecovered(
        op_id="op-r", org_id=ORG, sandbox_id=SB, host_id="h1", state="starting",
        lost_at=at(10), vcpus=2, memory_mib=512, occurred_at=at(20)).model_dump(mode="json"))
    m.observe(started(30))
    m.observe(destroyed(90))
    [u] = m.cut(at(100), period_s=0)
    assert u.period_start == at(30) and u.vcpu_seconds == 2 * 60.0

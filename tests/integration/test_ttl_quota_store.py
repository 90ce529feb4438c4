"""Leases and quotas in the gateway's store (SQLite and PostgreSQL)."""
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from common.eventstore import store_env
from common.timefmt import parse_time
from contracts.sandbox import (Failure, NetworkSpec, SandboxDestroyed, SandboxFailed,
                               SandboxScheduled, SandboxSpec, SandboxStarted, SandboxStarting)
from contracts.snapshot import SnapshotCreated, SnapshotDeleted, SnapshotFailed
from services.api_gateway.application.errors import Conflict, TooMany, Unprocessable
from services.api_gateway.adapters.sealer import Sealer
from services.api_gateway.application.ledger import SandboxLedger
from services.api_gateway.application.rate_limit import RateLimiter
from services.api_gateway.application.sandboxes import Sandboxes
from services.api_gateway.application.waiters import Waiters
from services.api_gateway.domain.quota import Limits, org_live_uuid

KEY = bytes(range(32))
NOW = datetime(2026, 1, 1, tzinfo=UTC)
MIB = 1 << 20
pytestmark = pytest.mark.integration


@pytest.fixture
def ledger(store, tmp_path):
    app = SandboxLedger(store_env(store, tmp_path, "gateway"), Sealer(KEY))
    yield app
    app.close()


def types(ledger, sb):
    return [e["type"] for e in ledger.history(str(sb.id), sb.org_id)]


def test_lease_warns_once_then_destroys_at_deadline(ledger):
    sb, _ = ledger.request("o", SandboxSpec(ttl_seconds=100), "op", None, None)
    deadline = parse_time(sb.expires_at)
    sid = str(sb.id)
    assert ledger.expire(sid, deadline - timedelta(seconds=61), 60) is None
    assert ledger.expire(sid, deadline - timedelta(seconds=59), 60) == "warn"
    assert ledger.expire(sid, deadline - timedelta(seconds=30), 60) is None  # once
    assert ledger.expire(sid, deadline, 60) == "destroy"
    assert ledger.expire(sid, deadline + timedelta(seconds=5), 60) is None
    hist = ledger.history(sid, "o")
    assert [e["type"] for e in hist] == ["SandboxRequested", "SandboxExpiring",
                                         "SandboxDestroyRequested"]
    assert hist[-1]["reason"] == "ttl_expired"


def test_extension_moves_warning_and_deadline(ledger):
    sb, _ = ledger.request("o", SandboxSpec(ttl_seconds=100), "op", None, None)
    sid, first = str(sb.id), parse_time(sb.expires_at)
    assert ledger.expire(sid, first - timedelta(seconds=10), 60) == "warn"
    now = first - timedelta(seconds=5)
    ext = ledger.extend_ttl(sid, "o", 600, "op", None, now)
    assert parse_time(ext.expires_at) == now + timedelta(seconds=600)
    assert ledger.expire(sid, first + timedelta(seconds=1), 60) is None  # old deadline gone
    assert ledger.expire(sid, now + timedelta(seconds=545), 60) == "warn"  # warned anew
    assert ledger.expire(sid, now + timedelta(seconds=600), 60) == "destroy"
    with pytest.raises(Conflict):
        ledger.extend_ttl(sid, "o", 600, "op", None, now)  # destroy already requested


def test_live_quota_is_exact_under_concurrency_and_released_on_end(ledger):
    limits = Limits(max_live=3)

    def create(_):
        try:
            return ledger.request("o", SandboxSpec(), "op", None, None, limits)[0]
        except TooMany:
            return None
    with ThreadPoolExecutor(6) as pool:
        made = [sb for sb in pool.map(create, range(10)) if sb is not None]
    assert len(made) == 3
    with pytest.raises(TooMany):
        ledger.request("o", SandboxSpec(), "op", None, None, limits)
    ledger.request("other-org", SandboxSpec(), "op", None, None, limits)  # per org
    a, b = made[0], made[1]
    ledger.request_destroy(str(a.id), "o", "op", None)
    ledger.ingest(SandboxDestroyed(op_id="op", org_id="o", sandbox_id=str(a.id)))
    ledger.ingest(SandboxFailed(op_id="op", org_id="o", sandbox_id=str(b.id),
                                failure=Failure(code="no_capacity", message="m")))
    for _ in range(2):
        ledger.request("o", SandboxSpec(), "op", None, None, limits)
    with pytest.raises(TooMany):
        ledger.request("o", SandboxSpec(), "op", None, None, limits)


def test_concurrent_creates_batch_without_leaking_quota_to_refused_ones(ledger):
    """Racing creates of one org share transactions: a refused name or a replayed
    key reserves nothing, and the quota stays exact."""
    limits = Limits(max_live=4)

    def create(i):
        spec = SandboxSpec(name="web") if i % 2 else SandboxSpec()
        try:
            sb, created = ledger.request("o", spec, "op", None, f"key-{i % 4}", limits)
            return str(sb.id), created
        except (Conflict, TooMany) as e:
            return type(e).__name__, False
    with ThreadPoolExecutor(8) as pool:
        out = list(pool.map(create, range(16)))
    made = {sid for sid, created in out if created}
    # keys 0 and 2 make unnamed sandboxes; keys 1 and 3 both want "web": one wins
    assert len(made) == 3, out
    assert sum(1 for sid, _ in out if sid == "Conflict") >= 1
    replays = [sid for sid, created in out if not created and sid not in ("Conflict", "TooMany")]
    assert set(replays) <= made
    ledger.request("o", SandboxSpec(), "op", None, None, limits)  # the 4th fits
    with pytest.raises(TooMany):
        ledger.request("o", SandboxSpec(), "op", None, None, limits)


def test_two_gateway_instances_share_one_exact_quota(store, tmp_path):
    env = store_env(store, tmp_path, "gateway")
    a, b = SandboxLedger(env, Sealer(KEY)), SandboxLedger(env, Sealer(KEY))
    limits = Limits(max_live=7)

    def create(i):
        try:
            return (a if i % 2 else b).request("o", SandboxSpec(), "op", None, None, limits)[0]
        except TooMany:
            return None
    try:
        with ThreadPoolExecutor(8) as pool:
            made = [sb for sb in pool.map(create, range(24)) if sb is not None]
        assert len(made) == 7
        assert len(b._get(org_live_uuid("o")).live) == 7
    finally:
        a.close()
        b.close()


def test_impossible_sizes_are_unprocessable(ledger):
    with pytest.raises(Unprocessable):
        ledger.request("o", SandboxSpec(vcpus=16), "op", None, None, Limits(max_vcpus=8))
    with pytest.raises(Unprocessable):
        ledger.request("o", SandboxSpec(memory_mib=65536), "op", None, None,
                       Limits(max_memory_mib=16384))


def test_rate_limiter_refills_by_clock():
    now = [0.0]
    rl = RateLimiter(per_minute=2, clock=lambda: now[0])
    assert rl.retry_after("o") == 0 and rl.retry_after("o") == 0
    assert rl.retry_after("o") == 30  # one token per 30 s
    assert rl.retry_after("p") == 0   # per org
    now[0] = 30.0
    assert rl.retry_after("o") == 0


def test_quota_aggregate_loads_from_snapshots(ledger):
    from services.api_gateway.domain.quota import org_live_uuid
    for _ in range(130):  # reserve + release: 260+ events on one aggregate
        sb, _ = ledger.request("busy", SandboxSpec(), "op", None, None, Limits(max_live=1))
        ledger.ingest(SandboxFailed(op_id="op", org_id="busy", sandbox_id=str(sb.id),
                                    failure=Failure(code="x", message="y")))
    uid = org_live_uuid("busy")
    snap = list(ledger.snapshots.get(uid, desc=True, limit=1))
    assert snap and snap[0].originator_version >= 200  # taken as it grew
    assert ledger.repository.get(uid).live == []
    assert ledger.request("busy", SandboxSpec(), "op", None, None, Limits(max_live=1))[1]


def test_rate_limiter_takes_all_or_none():
    now = [0.0]
    rl = RateLimiter(per_minute=3, clock=lambda: now[0])
    assert rl.retry_after("o", 2) == 0  # 1 token left
    assert rl.retry_after("o", 2) == 20  # 1 more needed: 20 s at 3/min
    assert rl.retry_after("o", 1) == 0  # the refused take consumed nothing


def _running_snapshot(ledger: SandboxLedger, org: str) -> str:
    """A running sandbox (its facts folded in) and a ready snapshot of it."""
    sb, _ = ledger.request(org, SandboxSpec(), "op", None, None)
    ids = dict(op_id="op", org_id=org, sandbox_id=str(sb.id))
    ledger.ingest(SandboxScheduled(host_id="h1", **ids))
    ledger.ingest(SandboxStarting(host_id="h1", **ids))
    ledger.ingest(SandboxStarted(host_id="h1", vcpus=1, memory_mib=256, accel="tcg", **ids))
    snap = ledger.request_snapshot(str(sb.id), org, "s", "op", None, Limits(), 3600, NOW)
    ledger.ingest(SnapshotCreated(host_id="h1", image="default", vcpus=1, memory_mib=256,
                                  size_bytes=1, took_ms=1, snapshot_id=str(snap.id), **ids))
    return str(snap.id)


async def test_forks_are_admitted_like_creates(ledger):
    """A fork of N sandboxes takes N create tokens (all or none) and counts
    against the live quota, like N creates."""
    now = [0.0]
    app = Sandboxes(ledger, listing=None, limits=Limits(max_live=4),  # type: ignore[arg-type]
                    limiter=RateLimiter(per_minute=4, clock=lambda: now[0]), waiters=Waiters())
    snap_id = _running_snapshot(ledger, "o")  # 1 live, no token used (made by the ledger)
    spec = await app.fork_spec(snap_id, "o", 600, {}, {}, NetworkSpec())
    assert len(await app.fork("o", spec, 3, "op")) == 3  # 3 of 4 tokens; 4 live
    with pytest.raises(TooMany) as too_fast:
        await app.fork("o", spec, 2, "op")  # 1 token left: refused, nothing created
    assert too_fast.value.retry_after_s == 15
    with pytest.raises(TooMany, match="live sandboxes"):
        await app.create("o", SandboxSpec(), "op", None)  # the last token; the quota is full
    with pytest.raises(TooMany, match="rate limit"):
        await app.fork("o", spec, 1, "op")  # creates and forks share one bucket
    now[0] = 60.0  # tokens back; the live quota still full
    with pytest.raises(TooMany, match="live sandboxes"):
        await app.fork("o", spec, 1, "op")


def _running(ledger: SandboxLedger, org: str, memory_mib: int = 256) -> dict[str, str]:
    sb, _ = ledger.request(org, SandboxSpec(memory_mib=memory_mib), "op", None, None)
    ids = dict(op_id="op", org_id=org, sandbox_id=str(sb.id))
    ledger.ingest(SandboxScheduled(host_id="h1", **ids))
    ledger.ingest(SandboxStarting(host_id="h1", **ids))
    ledger.ingest(SandboxStarted(host_id="h1", vcpus=1, memory_mib=memory_mib, accel="tcg",
                                 **ids))
    return ids


def _created(ledger: SandboxLedger, ids: dict[str, str], snap_id: str, mib: int) -> None:
    ledger.ingest(SnapshotCreated(host_id="h1", image="default", vcpus=1, memory_mib=256,
                                  size_bytes=mib * MIB, took_ms=1, snapshot_id=snap_id, **ids))


def test_snapshot_quotas_bound_count_bytes_and_in_progress(ledger):
    ids = _running(ledger, "q")
    limits = Limits(max_snapshots=3, max_snapshot_mib=700, max_pending_snapshots=1)

    def take():
        return str(ledger.request_snapshot(ids["sandbox_id"], "q", "s", "op", None, limits,
                                           3600, NOW).id)
    first = take()
    with pytest.raises(TooMany, match="in progress"):  # the first is still pending
        take()
    _created(ledger, ids, first, 300)
    second = take()  # 300 MiB held + 256 MiB estimated
    ledger.ingest(SnapshotFailed(host_id="h1", snapshot_id=second,
                                 failure=Failure(code="vmm_error", message="x"), **ids))
    third = take()  # a failed snapshot holds nothing
    _created(ledger, ids, third, 350)
    with pytest.raises(TooMany, match="700 MiB"):  # 650 held + 256 estimated
        take()
    ledger.request_snapshot_delete(third, "q", "op", None)
    assert ledger.find_snapshot(third, "q").state == "deleting"
    with pytest.raises(TooMany, match="700 MiB"):  # held until the host has deleted it
        take()
    ledger.ingest(SnapshotDeleted(host_id="h1", snapshot_id=third, **ids))
    fourth = take()
    _created(ledger, ids, fourth, 1)
    _created(ledger, ids, take(), 1)
    with pytest.raises(TooMany, match="holds 3 snapshots"):
        take()
    # quotas are per org
    other = _running(ledger, "q2")
    assert ledger.request_snapshot(other["sandbox_id"], "q2", "s", "op", None, limits, 60, NOW)


def test_concurrent_snapshot_requests_never_exceed_the_quota(ledger):
    ids = _running(ledger, "race")
    limits = Limits(max_snapshots=3, max_snapshot_mib=1 << 20, max_pending_snapshots=3)

    def take(_):
        try:
            return ledger.request_snapshot(ids["sandbox_id"], "race", "s", "op", None, limits,
                                           3600, NOW)
        except TooMany:
            return None
    with ThreadPoolExecutor(8) as pool:
        made = [s for s in pool.map(take, range(12)) if s is not None]
    assert len(made) == 3


def test_a_snapshot_is_deleted_when_its_lifetime_ends(ledger):
    ids = _running(ledger, "t")
    snap = ledger.request_snapshot(ids["sandbox_id"], "t", "s", "op", None, Limits(), 600, NOW)
    sid = str(snap.id)
    assert snap.expires_at == "2026-01-01T00:10:00.000000Z"
    assert not ledger.expire_snapshot(sid, NOW + timedelta(seconds=599))  # pending, not due
    _created(ledger, ids, sid, 10)
    assert not ledger.expire_snapshot(sid, NOW + timedelta(seconds=599))
    assert ledger.expire_snapshot(sid, NOW + timedelta(seconds=600))
    snap = ledger.find_snapshot(sid, "t")
    assert snap.state == "deleting"
    assert not ledger.expire_snapshot(sid, NOW + timedelta(seconds=601))  # once

"""The gateway's event store and read model on SQLite and PostgreSQL."""
import asyncio
from pathlib import Path

import pytest

from common.eventstore import store_env
from contracts.sandbox import SandboxScheduled, SandboxSpec, SandboxStarted, SandboxStarting
from services.api_gateway.adapters.read_model import ReadModel
from services.api_gateway.application.errors import (Conflict, IdempotencyMismatch, NotFound,
                                                     OutOfOrder)
from services.api_gateway.adapters.sealer import Sealer
from services.api_gateway.application.ledger import SandboxLedger

KEY = bytes(range(32))
pytestmark = pytest.mark.integration


@pytest.fixture
def ledger(store, tmp_path):
    app = SandboxLedger(store_env(store, tmp_path, "gateway"), Sealer(KEY))
    yield app
    app.close()


def fact(cls, sb, **kw):
    return cls(op_id="op", org_id=sb.org_id, sandbox_id=str(sb.id), **kw)


def test_request_is_idempotent_per_key_and_body(ledger):
    a, created = ledger.request("org1", SandboxSpec(vcpus=2), "op1", None, "key-1")
    b, again = ledger.request("org1", SandboxSpec(vcpus=2), "op2", None, "key-1")
    assert created and not again and a.id == b.id
    with pytest.raises(IdempotencyMismatch):
        ledger.request("org1", SandboxSpec(vcpus=4), "op3", None, "key-1")
    c, _ = ledger.request("org2", SandboxSpec(vcpus=2), "op4", None, "key-1")
    assert c.id != a.id  # keys are per org


def test_state_rebuilt_from_store_and_facts_deduplicated(ledger, store, tmp_path):
    sb, _ = ledger.request("org1", SandboxSpec(), "op", None, None)
    scheduled = fact(SandboxScheduled, sb, host_id="h1")
    assert ledger.ingest(scheduled) is True
    assert ledger.ingest(scheduled) is False  # redelivery changes nothing
    ledger.ingest(fact(SandboxStarting, sb, host_id="h1"))
    ledger.ingest(fact(SandboxStarted, sb, host_id="h1", vcpus=1, memory_mib=256, accel="fake"))
    fresh = SandboxLedger(store_env(store, tmp_path, "gateway"), Sealer(KEY))  # a restarted process
    try:
        again = fresh.find(str(sb.id), "org1")
        assert again.state == "running" and again.host_id == "h1"
        assert [e["type"] for e in fresh.history(str(sb.id), "org1")] == [
            "SandboxRequested", "SandboxScheduled", "SandboxStarting", "SandboxStarted"]
    finally:
        fresh.close()


def test_other_org_sees_nothing(ledger):
    sb, _ = ledger.request("org1", SandboxSpec(), "op", None, None)
    with pytest.raises(NotFound):
        ledger.find(str(sb.id), "org2")
    with pytest.raises(NotFound):
        ledger.request_destroy(str(sb.id), "org2", "op", None)
    assert ledger.find(str(sb.id), "org1").state == "requested"


def test_fact_from_wrong_org_is_rejected(ledger):
    sb, _ = ledger.request("org1", SandboxSpec(), "op", None, None)
    bad = SandboxScheduled(op_id="op", org_id="org2", sandbox_id=str(sb.id), host_id="h")
    with pytest.raises(ValueError):
        ledger.ingest(bad)


def test_names_unique_among_live_sandboxes(ledger):
    a, _ = ledger.request("org1", SandboxSpec(name="web"), "op", None, None)
    with pytest.raises(Conflict):
        ledger.request("org1", SandboxSpec(name="web"), "op", None, None)
    ledger.request("org2", SandboxSpec(name="web"), "op", None, None)  # other org: fine
    ledger.request("org1", SandboxSpec(name="web-2"), "op", None, None)  # no prefix matching
    ledger.request_destroy(str(a.id), "org1", "op", None)
    from contracts.sandbox import SandboxDestroyed
    ledger.ingest(fact(SandboxDestroyed, a))
    b, created = ledger.request("org1", SandboxSpec(name="web"), "op", None, None)
    assert created and b.id != a.id


def test_concurrent_same_name_has_one_winner(ledger):
    from concurrent.futures import ThreadPoolExecutor

    def attempt(_):
        try:
            ledger.request("org1", SandboxSpec(name="race"), "op", None, None)
            return "ok"
        except Conflict:
            return "conflict"
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(attempt, range(8)))
    assert results.count("ok") == 1, results


async def test_read_model_projection_is_rebuildable(ledger, store, tmp_path):
    ids = []
    for i in range(5):
        sb, _ = await asyncio.to_thread(ledger.request, "org1", SandboxSpec(name=f"n{i}"),
                                        "op", None, None)
        ids.append(str(sb.id))
    await asyncio.to_thread(ledger.request, "org2", SandboxSpec(), "op", None, None)
    rm = ReadModel(store, str(Path(tmp_path) / "read.sqlite"))
    await rm.create()
    try:
        await rm.catch_up(ledger)
        page1, cur = await rm.list_sandboxes("org1", 3, None, None, None)
        page2, cur2 = await rm.list_sandboxes("org1", 3, cur, None, None)
        assert cur2 is None
        assert sorted(x["id"] for x in page1 + page2) == sorted(ids)
        assert (await rm.list_sandboxes("org1", 50, None, None, "n3"))[0][0]["name"] == "n3"
        sb = ledger.find(ids[0], "org1")
        ledger.ingest(fact(SandboxScheduled, sb, host_id="h9"))
        await rm.catch_up(ledger)
        assert [x["id"] for x in (await rm.list_sandboxes("org1", 50, None, "scheduled", None))[0]] == [ids[0]]
        before = await rm.list_sandboxes("org1", 50, None, None, None)
        await rm.rebuild(ledger)
        assert await rm.list_sandboxes("org1", 50, None, None, None) == before
        with pytest.raises(ValueError):
            await rm.list_sandboxes("org1", 5, "garbage!", None, None)
    finally:
        await rm.close()


def _from_host(msg, host_id: str):
    """`msg` as the bus delivers it from `host_id`'s own subject."""
    from contracts import parse_message
    from contracts.subjects import subject_for
    return parse_message(msg.to_json(), subject=subject_for(msg, host_id))


def test_env_values_stay_out_of_events_and_go_only_to_the_placement_host(ledger):
    secret = "hunter2-" + "x" * 20
    spec = SandboxSpec(env={"DB_PASSWORD": secret}, metadata={"team": "a"})
    sb, _ = ledger.request("org1", spec, "op", None, "k1")
    stored = [n.state for n in ledger.recorder.select_notifications(0, 100)]
    assert stored and not any(secret.encode() in s for s in stored)  # sealed in the store
    requested = ledger.history(str(sb.id), "org1")[0]
    assert requested["spec"]["env"] == {} and requested["secret_env"] is True
    assert requested["spec"]["metadata"] == {"team": "a"}
    import hashlib
    import json
    plain = hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True,
                                      separators=(",", ":")).encode()).hexdigest()
    assert requested["request_hash"] != plain  # keyed: guesses cannot be checked
    again, created = ledger.request("org1", spec, "op2", None, "k1")  # idempotent replay
    assert again.id == sb.id and not created
    with pytest.raises(OutOfOrder):  # not placed yet: the host asks again
        ledger.env_for_host(str(sb.id), "org1", "h1")
    ledger.ingest(fact(SandboxScheduled, sb, host_id="h1"))
    assert ledger.env_for_host(str(sb.id), "org1", "h1") == {"DB_PASSWORD": secret}
    for host, org in (("h2", "org1"), ("h1", "org2")):
        with pytest.raises(NotFound):
            ledger.env_for_host(str(sb.id), org, host)
    other_key = SandboxLedger(ledger.env, Sealer(bytes(32)))  # a gateway with another key
    try:
        with pytest.raises(ValueError):
            other_key.env_for_host(str(sb.id), "org1", "h1")
    finally:
        other_key.close()


def test_host_facts_count_only_from_the_placement_host(ledger):
    sb, _ = ledger.request("org1", SandboxSpec(), "op", None, None)
    starting = fact(SandboxStarting, sb, host_id="h2")
    with pytest.raises(OutOfOrder):  # before the placement is known
        ledger.ingest(_from_host(starting, "h2"))
    ledger.ingest(fact(SandboxScheduled, sb, host_id="h1"))
    with pytest.raises(ValueError):  # h2 does not hold it
        ledger.ingest(_from_host(starting, "h2"))
    assert ledger.find(str(sb.id), "org1").state == "scheduled"
    assert ledger.ingest(_from_host(fact(SandboxStarting, sb, host_id="h1"), "h1"))
    assert ledger.find(str(sb.id), "org1").state == "starting"


async def test_expiry_pass_deletes_snapshots_whose_lifetime_ended(ledger, store, tmp_path):
    """The gateway's expiry pass finds due snapshots in the read model and
    asks for their deletion; a snapshot not yet due is left alone."""
    from datetime import UTC, datetime, timedelta
    from types import SimpleNamespace

    from contracts.snapshot import SnapshotCreated
    from services.api_gateway.domain.quota import Limits
    from services.api_gateway.entrypoints.expiry import expire_once
    now = datetime.now(UTC)
    sb, _ = ledger.request("org1", SandboxSpec(), "op", None, None)
    for cls, kw in ((SandboxScheduled, {}), (SandboxStarting, {}),
                    (SandboxStarted, dict(vcpus=1, memory_mib=256, accel="tcg"))):
        ledger.ingest(fact(cls, sb, host_id="h1", **kw))
    snaps = [ledger.request_snapshot(str(sb.id), "org1", "s", "op", None,
                                     Limits(max_pending_snapshots=2), ttl, now)
             for ttl in (60, 3600)]
    for s in snaps:
        ledger.ingest(fact(SnapshotCreated, sb, snapshot_id=str(s.id), host_id="h1",
                           image="default", vcpus=1, memory_mib=256, size_bytes=1, took_ms=1))
    rm = ReadModel(store, str(Path(tmp_path) / "read.sqlite"))
    await rm.create()
    try:
        await rm.catch_up(ledger)
        ctx = SimpleNamespace(settings=SimpleNamespace(ttl_warning_s=60), read_model=rm,
                              ledger=ledger)
        assert (await expire_once(ctx, now + timedelta(seconds=30)))["snapshot"] == 0
        done = await expire_once(ctx, now + timedelta(seconds=61))
        assert done["snapshot"] == 1
        assert [ledger.find_snapshot(str(s.id), "org1").state for s in snaps] == [
            "deleting", "ready"]
        await rm.catch_up(ledger)
        assert (await expire_once(ctx, now + timedelta(seconds=62)))["snapshot"] == 0
    finally:
        await rm.close()


def _start_at_once(env: dict, names: list) -> tuple[list, list]:
    """One StoreApp per name, constructed by as many threads released together."""
    import threading

    from common.eventstore import StoreApp
    apps: list = []
    errors: list = []
    gate = threading.Barrier(len(names))

    def build(name: str) -> None:
        gate.wait()
        try:
            apps.append(type(name, (StoreApp,), {})(env))
        except Exception as e:  # noqa: BLE001 - collected and asserted by the caller
            errors.append(e)
    threads = [threading.Thread(target=build, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return apps, errors


@pytest.mark.postgres
def test_services_creating_their_stores_at_once_on_a_new_schema(pg_base_url, tmp_path):
    """Every service starts at once on a fresh schema: the library's CREATE TYPE
    and CREATE TABLE race (CI saw billing die of it); they take turns."""
    import uuid

    import psycopg
    names = [f"Race{i}" for i in range(6)]
    for _ in range(4):
        schema = "race_" + uuid.uuid4().hex[:10]
        url = f"{pg_base_url}{'&' if '?' in pg_base_url else '?'}schema={schema}"
        apps, errors = _start_at_once(store_env(url, tmp_path, "x"), names)
        for app in apps:
            app.close()
        with psycopg.connect(pg_base_url.split("?")[0], autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        assert not errors and len(apps) == len(names), errors

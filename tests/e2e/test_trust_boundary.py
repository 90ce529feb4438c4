"""The attacks of the trust-boundary issue, replayed against a whole stack
(`corral up --driver fake`: real nats-server with its real configuration,
every service as a process): a peer with no credentials, a tenant, and a
second host with a token of its own. Plus the org-scoped event feed, which
resumes across a gateway restart with no gap and no duplicate."""
from __future__ import annotations

import asyncio
import json
import time

import httpx
import nats
import pytest

from contracts import subjects as s
from contracts.host import HostCapacity, HostHeartbeat, HostRegistered
from contracts.sandbox import Failure, SandboxDestroyed, SandboxFailed

from .conftest import running_stack
from .stack import Api, read_stream

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tb(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("trust"), driver="fake") as st:
        yield st


def feed(st, key: str, idle_s: float = 2.0, headers: dict | None = None,
         **params: str) -> list[tuple[str, str, dict]]:
    """(id, event, data) from GET /v1/events until it goes quiet for `idle_s`."""
    from corral_sdk.sse import SSEDecoder
    out: list[tuple[str, str, dict]] = []
    decoder = SSEDecoder()
    with httpx.stream("GET", st.api_url + "/v1/events", params=params,
                      headers={"Authorization": f"Bearer {key}", **(headers or {})},
                      timeout=httpx.Timeout(10, read=idle_s)) as r:
        assert r.status_code == 200, r.read()
        try:
            for chunk in r.iter_bytes():
                out += [(e.id or "", e.event, json.loads(e.data)) for e in decoder.feed(chunk)]
        except httpx.ReadTimeout:
            pass
    return out


def as_second_host(st, admin: Api, attack) -> tuple[str, list[str]]:
    """Run `attack(nc, host_id)` connected with a new host token; (host_id, errors)."""
    tok = admin.post("/v1/hosts/tokens", json={"name": "second"}).json()
    errors: list[str] = []

    async def go() -> None:
        async def on_error(e: Exception) -> None:
            errors.append(str(e))
        nc = await nats.connect(st.nats_url, user=s.HOST_BUS_USER, password=tok["token"],
                                inbox_prefix=s.host_inbox(tok["token"]), error_cb=on_error,
                                allow_reconnect=False)
        try:
            await attack(nc, tok["host_id"])
            await nc.flush()
            await asyncio.sleep(0.3)
        finally:
            await nc.close()
    asyncio.run(go())
    return tok["host_id"], errors


def test_nothing_reaches_the_bus_without_credentials(tb):
    async def go(**login: str) -> bool:
        try:
            nc = await nats.connect(tb.nats_url, allow_reconnect=False, connect_timeout=3,
                                    **login)
        except Exception:  # noqa: BLE001 - refused, however it says so
            return True
        await nc.close()
        return False
    for login in ({}, {"user": "gateway", "password": tb.creds.api_key},
                  {"user": s.HOST_BUS_USER, "password": tb.creds.api_key},
                  {"user": "ops", "password": tb.creds.admin_key}):
        assert asyncio.run(go(**login)), login


def test_a_second_host_cannot_forge_what_the_first_or_the_control_plane_says(tb):
    api, admin = Api(tb.api_url, tb.creds.api_key), Api(tb.api_url, tb.creds.admin_key)
    sb = api.post("/v1/sandboxes?wait=true", json={}).json()
    assert sb["state"] == "running" and sb["host_id"] == tb.creds.host_id
    history = api.get(f"/v1/sandboxes/{sb['id']}/events").json()["items"]
    ids = dict(op_id="op_forged", org_id=sb["org_id"], sandbox_id=sb["id"])
    cap = HostCapacity(vcpus=512, memory_mib=1 << 20, max_sandboxes=10_000)

    async def attack(nc, me: str) -> None:
        failed = SandboxFailed(failure=Failure(code="x", message="forged"), **ids)
        for subject, msg in (
                (s.sandbox_subject(sb["org_id"], sb["id"], "SandboxFailed"), failed),
                (s.host_fact_subject(tb.creds.host_id, sb["org_id"], sb["id"], "SandboxFailed"),
                 failed.model_copy(update={"host_id": tb.creds.host_id})),
                (s.host_subject(tb.creds.host_id, "HostHeartbeat"), HostHeartbeat(
                    op_id="op", host_id=tb.creds.host_id, seq=0, accel="kvm", capacity=cap,
                    running=0, used_vcpus=0, used_memory_mib=0, interval_s=1))):
            await nc.publish(subject, msg.to_json())  # refused by the server
        js = nc.jetstream()
        for msg in (failed.model_copy(update={"host_id": me}),
                    SandboxDestroyed(host_id=me, **ids)):  # its own subject: accepted...
            await js.publish(s.subject_for(msg, me), msg.to_json(),
                             headers={"Nats-Msg-Id": msg.event_id})
        with pytest.raises(Exception):  # noqa: B017 - refused: no stream read, no commands
            await js.subscribe("corral.evt.sandbox.>", stream="CORRAL_SANDBOX",
                               ordered_consumer=True)
    evil, errors = as_second_host(tb, admin, attack)
    assert sum("permissions violation" in e.lower() for e in errors) >= 3, errors

    # ...and dead-lettered by the gateway and the scheduler: it holds no placement
    deadline = time.monotonic() + 30
    while True:
        dead = [json.loads(m[1]["payload"]) for m in read_stream(tb, "corral.dlq.>")
                if f"hostfact.{evil}." in m[1]["subject"]]
        consumers = {m[1]["consumer"] for m in read_stream(tb, "corral.dlq.>")
                     if f"hostfact.{evil}." in m[1]["subject"]}
        if {"gateway-sandbox-ingest", "scheduler-placement"} <= consumers:
            break
        assert time.monotonic() < deadline, consumers
        time.sleep(0.2)
    assert {d["type"] for d in dead} <= {"SandboxFailed", "SandboxDestroyed"}
    now = api.get(f"/v1/sandboxes/{sb['id']}").json()
    assert now["state"] == "running" and now["failure"] is None
    assert api.get(f"/v1/sandboxes/{sb['id']}/events").json()["items"] == history
    shown = feed(tb, tb.creds.api_key, since="2000-01-01T00:00:00Z", sandbox_id=sb["id"])
    # the same facts (the stream's order may differ from the fold's: causes first there)
    assert sorted(d["event_id"] for _, _, d in shown) == sorted(h["event_id"] for h in history)
    hosts = {h["host_id"]: h for h in admin.get("/v1/hosts").json()["items"]}
    assert hosts[tb.creds.host_id]["status"] == "ready" and evil not in hosts
    assert hosts[tb.creds.host_id]["used"]["sandboxes"] >= 1  # its capacity still counted
    assert api.delete(f"/v1/sandboxes/{sb['id']}").status_code == 202


def test_a_revoked_host_is_cut_off_and_never_placed_on(tb):
    admin = Api(tb.api_url, tb.creds.admin_key)
    tok = admin.post("/v1/hosts/tokens", json={"name": "doomed"}).json()
    cap = HostCapacity(vcpus=64, memory_mib=1 << 16, max_sandboxes=100)
    state: dict = {}

    async def go() -> None:
        nc = await nats.connect(tb.nats_url, user=s.HOST_BUS_USER, password=tok["token"],
                                inbox_prefix=s.host_inbox(tok["token"]), allow_reconnect=False)
        reg = HostRegistered(op_id="op", host_id=tok["host_id"], hostname="doomed",
                             capacity=cap, accel="fake", agent_version="0")
        await nc.jetstream().publish(s.subject_for(reg), reg.to_json())
        deadline = time.monotonic() + 20
        while tok["host_id"] not in {h["host_id"] for h in
                                     (await asyncio.to_thread(admin.get, "/v1/hosts"))
                                     .json()["items"]}:
            assert time.monotonic() < deadline, "the registration was not seen"
            await asyncio.sleep(0.1)
        r = await asyncio.to_thread(admin.post, f"/v1/hosts/{tok['host_id']}/revoke")
        state["revoke"] = (r.status_code, r.json())
        for _ in range(50):
            if not nc.is_connected:
                break
            await asyncio.sleep(0.1)
        state["connected_after"] = nc.is_connected
        await nc.close()
        try:
            again = await nats.connect(tb.nats_url, user=s.HOST_BUS_USER, password=tok["token"],
                                       allow_reconnect=False, connect_timeout=3)
            await again.close()
            state["reconnected"] = True
        except Exception:  # noqa: BLE001 - refused
            state["reconnected"] = False
    asyncio.run(go())
    status, body = state["revoke"]
    assert status == 200 and body["revoked_tokens"] == 1 and body["disconnected"] == 1, body
    assert state["connected_after"] is False and state["reconnected"] is False
    deadline = time.monotonic() + 20
    while True:
        hosts = {h["host_id"]: h for h in admin.get("/v1/hosts").json()["items"]}
        if hosts[tok["host_id"]]["status"] == "revoked":
            break
        assert time.monotonic() < deadline, hosts[tok["host_id"]]
        time.sleep(0.1)


def test_the_event_feed_resumes_across_a_gateway_restart_with_no_gap_or_duplicate(tb):
    api = Api(tb.api_url, tb.creds.api_key)
    since = {"since": "2000-01-01T00:00:00Z"}
    first = [api.post("/v1/sandboxes?wait=true", json={}).json()["id"] for _ in range(2)]
    seen = feed(tb, tb.creds.api_key, **since)
    assert {d["sandbox_id"] for _, _, d in seen} >= set(first)
    cursor = seen[len(seen) // 2][0]
    tb.kill("api_gateway")
    tb.start_service("api_gateway")
    tb.wait_ready()
    later = [api.post("/v1/sandboxes?wait=true", json={}).json()["id"] for _ in range(2)]
    resumed = feed(tb, tb.creds.api_key, cursor=cursor)
    by_header = feed(tb, tb.creds.api_key, headers={"Last-Event-ID": cursor})
    everything = feed(tb, tb.creds.api_key, **since)
    tail = [x for x in everything if int(x[0]) > int(cursor)]
    assert resumed == tail == by_header  # exactly what came after the cursor, once each
    seqs = [int(i) for i, _, _ in everything]
    assert seqs == sorted(set(seqs))
    assert {d["sandbox_id"] for _, _, d in resumed} >= set(later)
    assert all(d["org_id"] == tb.creds.org_id for _, _, d in everything)
    # types filter, and another org sees none of it
    started = feed(tb, tb.creds.api_key, type="SandboxStarted", **since)
    assert {e for _, e, _ in started} == {"SandboxStarted"} and len(started) >= 4
    admin = Api(tb.api_url, tb.creds.admin_key)
    other = admin.post("/v1/orgs", json={"name": "feed-other"}).json()
    key = admin.post(f"/v1/orgs/{other['id']}/api-keys", json={"name": "k"}).json()["key"]
    assert feed(tb, key, **since) == []
    assert httpx.get(tb.api_url + "/v1/events", params={"org_id": tb.creds.org_id},
                     headers={"Authorization": f"Bearer {key}"}).status_code == 404
    ops = feed(tb, tb.creds.admin_key, **since)  # an admin key follows every org
    assert {d["sandbox_id"] for _, _, d in ops} >= set(first + later)


def test_a_create_near_the_body_limit_cannot_wedge_the_bus(tb):
    """The stack's NATS has the stock 1 MiB max_payload. A create whose body is
    just under the API's 1 MiB limit is refused (env + metadata over 64 KiB),
    and creates after it run normally."""
    api = Api(tb.api_url, tb.creds.api_key)
    big = {"env": {f"K{i}": "v" * 30_000 for i in range(34)}}  # ~1,020,000 bytes of JSON
    body = json.dumps(big).encode()
    assert 1_000_000 < len(body) < 1 << 20
    r = api.post("/v1/sandboxes", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text[:300]
    assert r.json()["errors"][0]["loc"] == ["body"], r.text[:300]
    over = api.post("/v1/sandboxes", content=b" " * (1 << 20) + body,
                    headers={"content-type": "application/json"})
    assert over.status_code == 413
    ok = {"env": {f"K{i}": "v" * 1000 for i in range(60)}}  # 60 KB: allowed
    for _ in range(3):
        r = api.post("/v1/sandboxes?wait=true", json=ok)
        assert r.status_code == 201 and r.json()["state"] == "running", r.text[:300]
        assert api.delete(f"/v1/sandboxes/{r.json()['id']}").status_code == 202


def test_no_credential_appears_in_any_log(tb):
    """Bus passwords, the issuer seed, host tokens and API keys: never logged
    (by any service, nor by nats-server)."""
    secrets_ = tb.bus
    assert secrets_ is not None
    needles = {"issuer seed": secrets_.issuer_seed, "auth password": secrets_.auth_password,
               "system password": secrets_.system_password,
               "host token": tb.creds.host_token, "api key": tb.creds.api_key,
               "admin key": tb.creds.admin_key,
               **{f"{k} password": v for k, v in secrets_.services.items()}}
    logs = [*(tb.state_dir / "logs").glob("*.log"), tb.state_dir / "nats" / "nats-server.log"]
    assert len(logs) >= 6
    for path in logs:
        text = path.read_text(errors="replace")
        for what, secret in needles.items():
            assert secret not in text, f"{what} in {path.name}"
            assert secret[-16:] not in text, f"part of the {what} in {path.name}"

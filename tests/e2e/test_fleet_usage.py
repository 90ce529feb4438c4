"""Fleet administration and usage through REST (FAKE VMM driver: control plane)."""
from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from .conftest import running_stack
from .stack import Api

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fstack(tmp_path_factory):
    env = {"CORRAL_PLACEMENT_TIMEOUT_S": "120"}
    with running_stack(tmp_path_factory.mktemp("fleet"), "fake", env) as st:
        yield st


@pytest.fixture(scope="module")
def api(fstack):
    return Api(fstack.api_url, fstack.creds.api_key)


@pytest.fixture(scope="module")
def admin(fstack):
    return Api(fstack.api_url, fstack.creds.admin_key)


def _host(admin: Api, host_id: str) -> dict:
    r = admin.get("/v1/hosts")
    assert r.status_code == 200, r.text
    return next(h for h in r.json()["items"] if h["host_id"] == host_id)


def test_hosts_list_shows_the_live_host_with_capacity(fstack, admin):
    h = _host(admin, fstack.creds.host_id)
    assert h["status"] == "ready" and h["alive"] is True
    assert h["capacity"] == {"vcpus": 128, "memory_mib": 131072, "sandboxes": 128}
    assert 0 <= h["last_heartbeat_age_s"] < 10
    assert set(h["used"]) == {"vcpus", "memory_mib", "sandboxes"}


def test_fleet_endpoints_need_an_admin_key(fstack, api, admin):
    hid = fstack.creds.host_id
    assert api.get("/v1/hosts").status_code == 403
    for op in ("cordon", "uncordon", "drain"):
        assert api.post(f"/v1/hosts/{hid}/{op}").status_code == 403
    assert _host(admin, hid)["status"] == "ready"  # nothing changed
    r = admin.post("/v1/hosts/no-such-host/cordon")
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")
    assert admin.post("/v1/hosts/bad.id/cordon").status_code in (404, 422)


def test_cordoned_host_gets_no_placements_until_uncordoned(fstack, api, admin):
    hid = fstack.creds.host_id
    running = api.post("/v1/sandboxes?wait=true").json()
    assert running["state"] == "running"
    try:
        r = admin.post(f"/v1/hosts/{hid}/cordon")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["changed"] is True and body["host"]["status"] == "cordoned"
        assert running["id"] in {s["sandbox_id"] for s in body["remaining"]}
        again = admin.post(f"/v1/hosts/{hid}/cordon").json()
        assert again["changed"] is False and again["host"]["status"] == "cordoned"
        sid = api.post("/v1/sandboxes").json()["id"]
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:  # the scheduler keeps retrying, never places it
            assert api.get(f"/v1/sandboxes/{sid}").json()["state"] == "requested"
            time.sleep(0.25)
        # sandboxes already there keep running
        assert api.get(f"/v1/sandboxes/{running['id']}").json()["state"] == "running"
    finally:
        r = admin.post(f"/v1/hosts/{hid}/uncordon")
    assert r.status_code == 200 and r.json()["host"]["status"] == "ready"
    placed = api.wait_state(sid, ("running",), 60)
    assert placed["host_id"] == hid
    for s in (sid, running["id"]):
        api.delete(f"/v1/sandboxes/{s}")


def test_drain_reports_remaining_sandboxes(fstack, api, admin):
    hid = fstack.creds.host_id
    sb = api.post("/v1/sandboxes?wait=true").json()
    try:
        r = admin.post(f"/v1/hosts/{hid}/drain")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["host"]["status"] == "draining" and body["changed"] is True
        left = {s["sandbox_id"]: s for s in body["remaining"]}
        assert sb["id"] in left and left[sb["id"]]["org_id"] == fstack.creds.org_id
        assert "migration" in body["note"]
        assert _host(admin, hid)["status"] == "draining"
        api.delete(f"/v1/sandboxes/{sb['id']}")
        api.wait_state(sb["id"], ("destroyed",), 60)
        deadline = time.monotonic() + 30  # it leaves the host as it ends
        while sb["id"] in {s["sandbox_id"] for s in
                           admin.post(f"/v1/hosts/{hid}/drain").json()["remaining"]}:
            assert time.monotonic() < deadline, "destroyed sandbox still allocated"
            time.sleep(0.2)
    finally:
        assert admin.post(f"/v1/hosts/{hid}/uncordon").status_code == 200


def _other_org_api(fstack, admin: Api) -> Api:
    org = admin.post("/v1/orgs", json={"name": "usage-other"}).json()
    key = admin.post(f"/v1/orgs/{org['id']}/api-keys", json={"name": "k"}).json()["key"]
    return Api(fstack.api_url, key)


def test_usage_lists_line_items_of_the_callers_org_only(fstack, api, admin):
    since = datetime.now(UTC) - timedelta(minutes=1)
    sb = api.post("/v1/sandboxes?wait=true", json={"vcpus": 2, "memory_mib": 512}).json()
    time.sleep(0.3)
    api.delete(f"/v1/sandboxes/{sb['id']}")
    api.wait_state(sb["id"], ("destroyed",), 60)
    params = {"from": since.isoformat(), "to": (since + timedelta(hours=1)).isoformat()}
    deadline = time.monotonic() + 30
    while True:
        r = api.get("/v1/usage", params=params)
        assert r.status_code == 200, r.text
        mine = [i for i in r.json()["items"] if i["sandbox_id"] == sb["id"]]
        if mine:
            break
        assert time.monotonic() < deadline, "no usage line item recorded"
        time.sleep(0.3)
    item = mine[0]
    assert item["vcpu_seconds"] > 0 and item["memory_mib_seconds"] == pytest.approx(
        item["vcpu_seconds"] * 256)
    assert set(item) == {"event_id", "sandbox_id", "period_start", "period_end",
                         "vcpu_seconds", "memory_mib_seconds", "snapshot_id",
                         "storage_mib_seconds", "stripe"}
    assert item["snapshot_id"] is None and item["storage_mib_seconds"] == 0
    # no Stripe key in this stack: each meter's event waits, pending
    assert [(p["meter"], p["state"]) for p in item["stripe"]] == [
        ("corral_memory_gib_seconds", "pending"), ("corral_vcpu_seconds", "pending")]
    assert r.json()["next_cursor"] is None
    default = api.get("/v1/usage").json()  # default range: the last 30 days
    assert item["event_id"] in {i["event_id"] for i in default["items"]}
    other = _other_org_api(fstack, admin)
    assert other.get("/v1/usage", params=params).json() == {"items": [], "next_cursor": None}
    assert admin.get("/v1/usage").status_code == 403


@pytest.mark.parametrize("params", [
    {"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
    {"from": "2026-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
    {"from": "2024-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},  # over 400 days
    {"from": "2026-01-01T00:00:00", "to": "2026-01-02T00:00:00Z"},  # no offset
    {"from": "soon"},
    {"limit": "0"}, {"limit": "501"},
    {"cursor": "not-a-cursor"},
])
def test_usage_rejects_bad_ranges(api, params):
    r = api.get("/v1/usage", params=params)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")

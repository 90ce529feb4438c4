"""Snapshots and forks through REST (FAKE VMM driver: ownership, routing,
pinning and lifecycle; real memory images are in test_vm_platform.py)."""
import time
import uuid

import pytest

from .conftest import running_stack
from .stack import Api

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sstack(tmp_path_factory):
    env = {"CORRAL_QUOTA_MAX_SNAPSHOTS": "2", "CORRAL_QUOTA_OPS": "snapshot=2/4"}
    with running_stack(tmp_path_factory.mktemp("snapstack"), driver="fake", env=env) as st:
        yield st


def test_snapshot_fork_and_delete(sstack):
    api = Api(sstack.api_url, sstack.creds.api_key)
    src = api.post("/v1/sandboxes?wait=true", json={"vcpus": 1, "memory_mib": 256}).json()
    r = api.post(f"/v1/sandboxes/{src['id']}/snapshots?wait=true", json={"name": "base"})
    assert r.status_code == 201, r.text
    snap = r.json()
    assert snap["state"] == "ready" and snap["host_id"] == src["host_id"]
    assert snap["vcpus"] == 1 and snap["memory_mib"] == 256
    assert api.get(f"/v1/snapshots/{snap['id']}").json()["state"] == "ready"
    listed = api.get("/v1/snapshots").json()["items"]
    assert snap["id"] in [s["id"] for s in listed]

    r = api.post(f"/v1/snapshots/{snap['id']}/fork?wait=true", json={"count": 3})
    assert r.status_code == 201, r.text
    forks = r.json()["items"]
    assert len({f["id"] for f in forks}) == 3
    assert all(f["state"] == "running" and f["host_id"] == snap["host_id"] for f in forks)
    assert api.post("/v1/sandboxes", json={"snapshot_id": snap["id"], "vcpus": 2}).status_code == 422

    d = api.delete(f"/v1/snapshots/{snap['id']}")
    assert d.status_code == 202 and d.json()["state"] in ("deleting", "deleted")

    deadline = time.monotonic() + 30
    while api.get(f"/v1/snapshots/{snap['id']}").json()["state"] != "deleted":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert api.post(f"/v1/snapshots/{snap['id']}/fork", json={}).status_code == 409


def test_snapshots_belong_to_their_org(sstack):
    api = Api(sstack.api_url, sstack.creds.api_key)
    admin = Api(sstack.api_url, sstack.creds.admin_key)
    org = admin.post("/v1/orgs", json={"name": f"o-{uuid.uuid4().hex[:6]}"}).json()
    other = Api(sstack.api_url, admin.post(f"/v1/orgs/{org['id']}/api-keys",
                                           json={"name": "k"}).json()["key"])
    src = api.post("/v1/sandboxes?wait=true", json={}).json()
    snap = api.post(f"/v1/sandboxes/{src['id']}/snapshots?wait=true", json={"name": "mine"}).json()
    assert other.get(f"/v1/snapshots/{snap['id']}").status_code == 404
    assert other.post(f"/v1/snapshots/{snap['id']}/fork", json={}).status_code == 404
    assert other.post("/v1/sandboxes", json={"snapshot_id": snap["id"]}).status_code == 404
    assert other.delete(f"/v1/snapshots/{snap['id']}").status_code == 404
    assert other.post(f"/v1/sandboxes/{src['id']}/snapshots", json={"name": "x"}).status_code == 404
    assert snap["id"] not in [s["id"] for s in other.get("/v1/snapshots").json()["items"]]
    assert api.get(f"/v1/snapshots/{snap['id']}").json()["state"] == "ready"
    assert api.post(f"/v1/sandboxes/{src['id']}/snapshots", json={"name": "Bad Name"}).status_code == 422


def _org(sstack) -> Api:
    admin = Api(sstack.api_url, sstack.creds.admin_key)
    org = admin.post("/v1/orgs", json={"name": f"o-{uuid.uuid4().hex[:6]}"}).json()
    return Api(sstack.api_url, admin.post(f"/v1/orgs/{org['id']}/api-keys",
                                          json={"name": "k"}).json()["key"])


def test_snapshot_quota_rate_and_lifetime_through_rest(sstack):
    """CORRAL_QUOTA_MAX_SNAPSHOTS=2 and snapshot=2/4 (2 at once, 4 a minute)."""
    api = _org(sstack)
    src = api.post("/v1/sandboxes?wait=true", json={}).json()
    url = f"/v1/sandboxes/{src['id']}/snapshots?wait=true"
    first = api.post(url, json={"name": "a", "ttl_seconds": 3600})
    assert first.status_code == 201, first.text
    made = first.json()
    assert made["expires_at"] > made["created_at"]
    assert api.post(url, json={"name": "b"}).status_code == 201
    full = api.post(url, json={"name": "c"})  # holds 2: the count quota
    assert full.status_code == 429, full.text
    assert full.headers["content-type"].startswith("application/problem+json")
    assert "holds 2 snapshots" in full.json()["detail"] and full.headers["retry-after"]
    assert api.post(url, json={"name": "d", "ttl_seconds": 10}).status_code == 422
    api.delete(f"/v1/snapshots/{made['id']}")
    deadline = time.monotonic() + 30
    while api.get(f"/v1/snapshots/{made['id']}").json()["state"] != "deleted":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert api.post(url, json={"name": "e"}).status_code == 201  # room again, 4th token
    fast = api.post(url, json={"name": "f"})  # 5 in a minute: the rate
    assert fast.status_code == 429 and "rate limit" in fast.json()["detail"]
    assert int(fast.headers["retry-after"]) >= 1

"""Leases and quotas through REST (FAKE VMM driver: about the control plane)."""
import signal
import time
from datetime import datetime

import pytest

from .conftest import running_stack
from .stack import Api

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def qstack(tmp_path_factory):
    env = {"CORRAL_TTL_WARNING_S": "5", "CORRAL_QUOTA_MAX_LIVE": "4",
           "CORRAL_QUOTA_CREATES_PER_MINUTE": "1000", "CORRAL_EXPIRY_INTERVAL_S": "0.2"}
    with running_stack(tmp_path_factory.mktemp("qstack"), "fake", env) as st:
        yield st


def test_lease_expires_durably_across_a_gateway_crash(qstack):
    api = Api(qstack.api_url, qstack.creds.api_key)
    sb = api.post("/v1/sandboxes?wait=true", json={"ttl_seconds": 10}).json()
    qstack.kill("api_gateway", signal.SIGKILL)  # nothing in memory survives this
    qstack.start_service("api_gateway")
    qstack.wait_ready()
    done = api.wait_state(sb["id"], ("destroyed",), 30)
    hist = api.get(f"/v1/sandboxes/{sb['id']}/events").json()["items"]
    kinds = [e["type"] for e in hist]
    assert kinds.index("SandboxExpiring") < kinds.index("SandboxDestroyRequested")
    assert kinds.count("SandboxExpiring") == 1
    assert next(e for e in hist if e["type"] == "SandboxDestroyRequested")["reason"] == "ttl_expired"
    ended = done["ended_at"].replace("Z", "+00:00")
    assert datetime.fromisoformat(ended) >= datetime.fromisoformat(
        sb["expires_at"].replace("Z", "+00:00"))


def test_extension_moves_the_deadline(qstack):
    api = Api(qstack.api_url, qstack.creds.api_key)
    sb = api.post("/v1/sandboxes?wait=true", json={"ttl_seconds": 10}).json()
    r = api.post(f"/v1/sandboxes/{sb['id']}/ttl", json={"ttl_seconds": 600})
    assert r.status_code == 200 and r.json()["expires_at"] > sb["expires_at"]
    time.sleep(11)  # past the original deadline: waiting for a deadline is the point here
    assert api.get(f"/v1/sandboxes/{sb['id']}").json()["state"] == "running"
    assert api.post(f"/v1/sandboxes/{sb['id']}/ttl", json={"ttl_seconds": 1}).status_code == 422
    api.delete(f"/v1/sandboxes/{sb['id']}")
    api.wait_state(sb["id"], ("destroyed",))
    r = api.post(f"/v1/sandboxes/{sb['id']}/ttl", json={"ttl_seconds": 600})
    assert r.status_code == 409


def test_quota_429_with_retry_after_and_422_for_impossible(qstack):
    admin = Api(qstack.api_url, qstack.creds.admin_key)
    org = admin.post("/v1/orgs", json={"name": "quota-org"}).json()
    key = admin.post(f"/v1/orgs/{org['id']}/api-keys", json={"name": "k"}).json()["key"]
    api = Api(qstack.api_url, key)
    ids = [api.post("/v1/sandboxes", json={}).json()["id"] for _ in range(4)]
    r = api.post("/v1/sandboxes", json={})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert r.headers["content-type"].startswith("application/problem+json")
    assert api.post("/v1/sandboxes", json={"vcpus": 64}).status_code == 422
    api.delete(f"/v1/sandboxes/{ids[0]}")
    api.wait_state(ids[0], ("destroyed",))
    deadline = time.monotonic() + 10
    while (r := api.post("/v1/sandboxes", json={})).status_code == 429:
        assert time.monotonic() < deadline, "quota not released after destroy"
        time.sleep(0.1)
    assert r.status_code == 202

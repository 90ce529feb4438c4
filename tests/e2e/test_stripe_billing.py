"""A sandbox's usage reaches Stripe (a local stand-in, through the real SDK)
within a minute of its end, as `corral up` runs it with CORRAL_STRIPE_*; the
billing admin endpoints through REST (FAKE VMM driver: control plane)."""
from __future__ import annotations

import re
import time

import pytest

from corral.fake_stripe import FakeStripe

from .conftest import running_stack
from .stack import Api

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fake():
    f = FakeStripe().serve()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def sstack(tmp_path_factory, fake):
    env = {"CORRAL_STRIPE_API_KEY": "sk_test_corral", "CORRAL_STRIPE_API_BASE": fake.url}
    with running_stack(tmp_path_factory.mktemp("stripe"), "fake", env) as st:
        yield st


def test_a_sandboxs_usage_is_on_stripe_within_a_minute_of_its_end(sstack, fake):
    api = Api(sstack.api_url, sstack.creds.api_key)
    admin = Api(sstack.api_url, sstack.creds.admin_key)
    sid = api.post("/v1/sandboxes?wait=true", json={"vcpus": 2, "memory_mib": 512}).json()["id"]
    time.sleep(2)
    assert api.delete(f"/v1/sandboxes/{sid}").status_code in (200, 202, 204)
    api.wait_state(sid, ("destroyed",), 60)
    ended = time.monotonic()
    line = None
    while time.monotonic() - ended < 60:
        mine = [i for i in api.get("/v1/usage").json()["items"] if i["sandbox_id"] == sid]
        if mine and mine[0]["stripe"] and all(p["state"] == "sent" for p in mine[0]["stripe"]):
            line = mine[0]
            break
        time.sleep(0.5)
    assert line is not None, "usage not on Stripe within a minute"
    took = time.monotonic() - ended
    by_meter = {p["meter"]: p for p in line["stripe"]}
    assert set(by_meter) == {"corral_vcpu_seconds", "corral_memory_gib_seconds"}
    for meter, p in by_meter.items():
        assert p["identifier"] == f"{line['event_id']}:{meter}"
        ev = fake.events[p["identifier"]]
        assert ev["event_name"] == meter and ev["payload"]["value"] == p["value"]
    assert abs(float(by_meter["corral_vcpu_seconds"]["value"]) - line["vcpu_seconds"]) < 1e-6
    link = admin.get(f"/v1/orgs/{sstack.creds.org_id}/billing").json()
    assert link["source"] == "created" and link["push_enabled"] is True
    assert ev["payload"]["stripe_customer_id"] == link["stripe_customer_id"]
    print(f"usage on Stripe {took:.1f}s after the sandbox was destroyed")


def test_billing_admin_needs_an_admin_key_and_checks_its_input(sstack):
    api = Api(sstack.api_url, sstack.creds.api_key)
    admin = Api(sstack.api_url, sstack.creds.admin_key)
    org = sstack.creds.org_id
    assert api.get(f"/v1/orgs/{org}/billing").status_code == 403
    assert api.put(f"/v1/orgs/{org}/billing", json={"stripe_customer_id": "cus_x"}
                   ).status_code == 403
    assert api.get("/v1/admin/billing/parked").status_code == 403
    r = admin.put(f"/v1/orgs/{org}/billing", json={"stripe_customer_id": "not-a-customer"})
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    r = admin.put("/v1/orgs/other-org/billing", json={"stripe_customer_id": "cus_Other1"})
    assert r.status_code == 200 and r.json()["source"] == "admin"
    assert admin.get("/v1/orgs/other-org/billing").json()["stripe_customer_id"] == "cus_Other1"
    page = admin.get("/v1/admin/billing/parked").json()
    assert page["items"] == [] and all(t["state"] != "parked" for t in page["totals"])
    r = admin.post("/v1/admin/billing/parked/retry", json={"identifiers": None})
    assert r.status_code == 200 and r.json() == {"retried": 0}


def _spend(api: Api) -> dict:
    r = api.get("/v1/spend")
    assert r.status_code == 200, r.text
    return r.json()


def test_spend_cap_warns_at_80_percent_and_refuses_creates_at_100(sstack):
    api = Api(sstack.api_url, sstack.creds.api_key)
    admin = Api(sstack.api_url, sstack.creds.admin_key)
    org = sstack.creds.org_id
    keeps = api.post("/v1/sandboxes?wait=true").json()  # running before any cap
    sid = api.post("/v1/sandboxes?wait=true", json={"vcpus": 2}).json()["id"]
    time.sleep(1)
    api.delete(f"/v1/sandboxes/{sid}")
    api.wait_state(sid, ("destroyed",), 60)
    deadline = time.monotonic() + 30
    while _spend(api)["used_vcpu_seconds"] <= 0:
        assert time.monotonic() < deadline, "usage never counted"
        time.sleep(0.3)
    assert api.put(f"/v1/orgs/{org}/spend-cap",
                   json={"monthly_vcpu_seconds": 1}).status_code == 403
    # usage keeps arriving (the running sandbox's periods, the deleted one's
    # last): set the cap at 90% of what is used now, again if it moved past 100%
    for _ in range(10):
        used = _spend(api)["used_vcpu_seconds"]
        r = admin.put(f"/v1/orgs/{org}/spend-cap", json={"monthly_vcpu_seconds": used / 0.9})
        if r.status_code != 200 or r.json()["percent"] < 95:
            break
        time.sleep(1)
    assert r.status_code == 200 and r.json()["level"] == "warn", r.text
    r = api.post("/v1/sandboxes")
    assert r.status_code == 202, r.text
    assert re.search(r"\b9\d% of the monthly", r.headers["Corral-Spend-Warning"])
    api.delete(f"/v1/sandboxes/{r.json()['id']}")

    r = admin.put(f"/v1/orgs/{org}/spend-cap", json={"monthly_vcpu_seconds": used / 2})
    assert r.json()["level"] == "over"
    r = api.post("/v1/sandboxes")
    assert r.status_code == 402, r.text
    body = r.json()
    assert r.headers["content-type"].startswith("application/problem+json")
    assert body["op_id"] and "cap is reached" in body["detail"]
    assert api.get(f"/v1/sandboxes/{keeps['id']}").json()["state"] == "running"
    assert admin.get(f"/v1/orgs/{org}/spend").json()["level"] == "over"

    assert admin.put(f"/v1/orgs/{org}/spend-cap",
                     json={"monthly_vcpu_seconds": None}).json()["level"] == "none"
    r = api.post("/v1/sandboxes")
    assert r.status_code == 202 and "Corral-Spend-Warning" not in r.headers
    for s in (r.json()["id"], keeps["id"]):
        api.delete(f"/v1/sandboxes/{s}")

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
    sid = api.post("/v1/sandboxes?wait=true", json={"vcpus": 2}).json()["id"]
    time.sleep(1)
    api.delete(f"/v1/sandboxes/{sid}")
    api.wait_state(sid, ("destroyed",), 60)
    # nothing runs now: once the destroyed sandbox's usage is counted it stays put,
    # so the cap below lands where it is meant to (a running sandbox's usage grew
    # past 100% between setting a cap at 90% and the create: CI saw 6 of 5)
    deadline, used, prev = time.monotonic() + 30, 0.0, -1.0
    while used <= 0 or used != prev:
        assert time.monotonic() < deadline, f"usage never settled ({prev} -> {used})"
        time.sleep(0.5)
        prev, used = used, _spend(api)["used_vcpu_seconds"]
    assert api.put(f"/v1/orgs/{org}/spend-cap",
                   json={"monthly_vcpu_seconds": 1}).status_code == 403
    r = admin.put(f"/v1/orgs/{org}/spend-cap", json={"monthly_vcpu_seconds": used / 0.92})
    assert r.status_code == 200 and r.json()["level"] == "warn", r.text
    r = api.post("/v1/sandboxes?wait=true")  # kept running through the cap below
    assert r.status_code == 201, r.text
    assert re.search(r"\b9\d% of the monthly", r.headers["Corral-Spend-Warning"])
    keeps = r.json()

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

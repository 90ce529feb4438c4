"""The platform through REST: lifecycle, history, errors, tenancy."""
import uuid

import httpx
import pytest

from .stack import Api, read_stream

pytestmark = pytest.mark.e2e


def assert_problem(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["op_id"] == r.headers["x-op-id"]
    assert {"type", "title", "detail"} <= body.keys()
    return body


def test_create_run_delete_destroyed_with_history_in_order(stack, api):
    r = api.post("/v1/sandboxes?wait=true", json={"name": "life", "metadata": {"k": "v"}})
    assert r.status_code == 201, r.text
    sb = r.json()
    assert sb["state"] == "running" and sb["host_id"] and sb["started_at"]
    assert sb["metadata"] == {"k": "v"} and r.headers["x-op-id"].startswith("op_")
    op_id = r.headers["x-op-id"]
    d = api.delete(f"/v1/sandboxes/{sb['id']}")
    assert d.status_code == 202 and d.json()["state"] == "stopping"
    assert api.delete(f"/v1/sandboxes/{sb['id']}").status_code == 202  # idempotent
    done = api.wait_state(sb["id"], ("destroyed",))
    assert done["ended_at"]
    hist = api.get(f"/v1/sandboxes/{sb['id']}/events").json()["items"]
    assert [e["type"] for e in hist] == [
        "SandboxRequested", "SandboxScheduled", "SandboxStarting", "SandboxStarted",
        "SandboxDestroyRequested", "SandboxDestroyed"]
    assert all(e["op_id"] == op_id for e in hist[:4])  # one id from the edge to the host
    assert hist[4]["op_id"] == d.headers["x-op-id"]
    for svc in ("scheduler", "host_agent"):
        assert op_id in (stack.state_dir / "logs" / f"{svc}.log").read_text()
    # the bus carries exactly the stored history, each message once
    msgs = read_stream(stack, f"corral.evt.sandbox.*.{sb['id']}.>",
                       f"corral.evt.hostfact.*.*.{sb['id']}.>")
    assert [m[1]["event_id"] for m in msgs] == [e["event_id"] for e in hist]
    assert all(m[2]["Nats-Msg-Id"] == m[1]["event_id"] for m in msgs)


def test_create_without_wait_and_list_pagination(api):
    tag = uuid.uuid4().hex[:6]
    ids = []
    for i in range(3):
        r = api.post("/v1/sandboxes", json={"name": f"pg-{tag}-{i}"})
        assert r.status_code == 202 and r.json()["state"] == "requested"
        ids.append(r.json()["id"])
    for sid in ids:
        api.wait_state(sid, ("running",))
    seen, cursor = [], None
    while True:
        page = api.get("/v1/sandboxes", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        seen += [x["id"] for x in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert set(ids) <= set(seen) and len(seen) == len(set(seen))
    named = api.get("/v1/sandboxes", params={"name": f"pg-{tag}-1"}).json()["items"]
    assert [x["id"] for x in named] == [ids[1]]


def test_idempotency_key(api):
    key = uuid.uuid4().hex
    a = api.post("/v1/sandboxes", json={"vcpus": 1}, headers={"Idempotency-Key": key})
    b = api.post("/v1/sandboxes", json={"vcpus": 1}, headers={"Idempotency-Key": key})
    assert a.status_code == b.status_code == 202 and a.json()["id"] == b.json()["id"]
    assert_problem(api.post("/v1/sandboxes", json={"vcpus": 2},
                            headers={"Idempotency-Key": key}), 422)


def test_validation_and_auth_errors_are_problems(stack, api):
    body = assert_problem(api.post("/v1/sandboxes", json={"name": "Bad_Name"}), 422)
    assert any("name" in e["loc"] for e in body["errors"])
    assert_problem(api.post("/v1/sandboxes", json={"vcpus": 0}), 422)
    assert_problem(api.post("/v1/sandboxes", json={"surprise": 1}), 422)
    assert_problem(api.post("/v1/sandboxes", content=b"{not json",
                            headers={"content-type": "application/json"}), 422)
    assert_problem(api.post("/v1/sandboxes", content=b"x" * (2 << 20),
                            headers={"content-type": "application/json"}), 413)
    assert_problem(api.get("/v1/sandboxes/does-not-exist"), 404)
    assert_problem(api.get("/v1/sandboxes", params={"limit": 501}), 422)
    assert_problem(api.get("/v1/sandboxes", params={"cursor": "%%%"}), 400)
    assert_problem(httpx.get(stack.api_url + "/v1/sandboxes"), 401)
    assert_problem(httpx.get(stack.api_url + "/v1/sandboxes",
                             headers={"Authorization": "Bearer crl_nope"}), 401)
    assert_problem(httpx.get(stack.api_url + "/v1/nowhere"), 404)
    a = api.post("/v1/sandboxes", json={"name": "dupe-name"})
    assert a.status_code == 202
    assert_problem(api.post("/v1/sandboxes", json={"name": "dupe-name"}), 409)


def test_other_org_cannot_see_or_touch(stack, api, admin):
    org = admin.post("/v1/orgs", json={"name": f"other-{uuid.uuid4().hex[:6]}"})
    assert org.status_code == 201, org.text
    key = admin.post(f"/v1/orgs/{org.json()['id']}/api-keys", json={"name": "k"}).json()["key"]
    other = Api(stack.api_url, key)
    mine = api.post("/v1/sandboxes?wait=true", json={}).json()
    for r in (other.get(f"/v1/sandboxes/{mine['id']}"),
              other.delete(f"/v1/sandboxes/{mine['id']}"),
              other.post(f"/v1/sandboxes/{mine['id']}/stop"),
              other.get(f"/v1/sandboxes/{mine['id']}/events")):
        assert_problem(r, 404)
    assert mine["id"] not in [x["id"] for x in other.get("/v1/sandboxes").json()["items"]]
    assert api.get(f"/v1/sandboxes/{mine['id']}").json()["state"] == "running"
    assert_problem(api.post("/v1/orgs", json={"name": "x"}), 403)  # org key is not admin
    assert_problem(admin.get("/v1/sandboxes"), 403)


def test_health_and_openapi(stack):
    assert httpx.get(stack.api_url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(stack.api_url + "/readyz").status_code == 200
    spec = httpx.get(stack.api_url + "/openapi.json").json()
    assert {"/v1/sandboxes", "/v1/sandboxes/{sandbox_id}",
            "/v1/sandboxes/{sandbox_id}/events"} <= spec["paths"].keys()

"""Tenancy and authentication at the edge, for every route the gateway serves.

Routes are enumerated from the live `/openapi.json`, so a new tenant-scoped
(sandbox, snapshot, ...) or admin route is covered the moment it is served. Each request carries a
minimal valid body/query derived from the document, so it gets past
validation and reaches the ownership or permission check.
One whole platform with the FAKE VMM driver (the control plane is under test).
"""
from __future__ import annotations

import io
import tarfile
import time
import uuid

import httpx
import pytest

from .conftest import running_stack
from .openapi_spec import Spec, is_admin, needs_auth, sample, scopes, streams
from .stack import Api

pytestmark = pytest.mark.e2e

SANDBOX_PREFIX = "/v1/sandboxes/{sandbox_id}"
REVOKE_DEADLINE_S = 10.0


def assert_problem(r: httpx.Response, status: int, where: str = "") -> dict:
    assert r.status_code == status, f"{where}: {r.status_code} {r.text[:500]}"
    assert r.headers["content-type"].startswith("application/problem+json"), where
    body = r.json()
    assert body["status"] == status and body["op_id"] == r.headers["x-op-id"], where
    assert {"type", "title", "detail"} <= body.keys(), where
    return body


# ---- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tstack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("tenancy"), driver="fake") as st:
        yield st


@pytest.fixture(scope="module")
def spec(tstack) -> Spec:
    r = httpx.get(tstack.api_url + "/openapi.json")
    assert r.status_code == 200
    return Spec(r.json())


@pytest.fixture(scope="module")
def org_a(tstack) -> Api:
    return Api(tstack.api_url, tstack.creds.api_key)


@pytest.fixture(scope="module")
def admin(tstack) -> Api:
    return Api(tstack.api_url, tstack.creds.admin_key)


@pytest.fixture(scope="module")
def org_b(tstack, admin) -> dict:
    org = admin.post("/v1/orgs", json={"name": f"tenant-b-{uuid.uuid4().hex[:6]}"})
    assert org.status_code == 201, org.text
    key = admin.post(f"/v1/orgs/{org.json()['id']}/api-keys", json={"name": "b"})
    assert key.status_code == 201, key.text
    return {"id": org.json()["id"], "key": key.json()["key"], "key_id": key.json()["id"],
            "api": Api(tstack.api_url, key.json()["key"])}


@pytest.fixture(scope="module")
def victim(org_a) -> dict:
    """Org A's running sandbox, with a long lease so nothing changes it by itself."""
    name = f"victim-{uuid.uuid4().hex[:8]}"
    r = org_a.post("/v1/sandboxes?wait=true", json={"name": name, "ttl_seconds": 3600,
                                                   "metadata": {"owner": "a"}})
    assert r.status_code == 201, r.text
    return r.json()


def new_sandbox(api: Api) -> str:
    r = api.post("/v1/sandboxes?wait=true", json={"ttl_seconds": 3600})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def new_snapshot(api: Api) -> str:
    r = api.post(f"/v1/sandboxes/{new_sandbox(api)}/snapshots?wait=true&timeout_s=30",
                 json={"name": "snap"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


# Tenant resources by path parameter: how to make one, and what shows its state.
# A new kind of tenant resource in the API needs a line here (the test says so).
def new_image(api: Api) -> str:
    """An image of the org's (the FAKE driver's host cannot build: it fails, and
    a failed image is still the org's resource)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        ti = tarfile.TarInfo("Dockerfile")
        ti.size = len(b"FROM default\n")
        tf.addfile(ti, io.BytesIO(b"FROM default\n"))
    r = api.post("/v1/images", params={"name": f"img-{uuid.uuid4().hex[:8]}"},
                 content=buf.getvalue(), headers={"Content-Type": "application/x-tar"})
    assert r.status_code == 202, r.text
    iid = r.json()["id"]
    deadline = time.monotonic() + 60
    while api.get(f"/v1/images/{iid}").json()["state"] == "building":  # settle before use
        assert time.monotonic() < deadline, "the image build never ended"
        time.sleep(0.1)
    return iid


MAKERS = {"sandbox_id": new_sandbox, "snapshot_id": new_snapshot, "image_id": new_image}
# Path parameters that name no tenant resource of their own (a process, a port
# inside the sandbox the route also names): any value, the sandbox decides.
SCALARS = {"pid": "1", "port": "8000"}
READERS = {"sandbox_id": ("/v1/sandboxes/{}", "/v1/sandboxes/{}/events?limit=500"),
           "snapshot_id": ("/v1/snapshots/{}",), "image_id": ("/v1/images/{}",)}


@pytest.fixture(scope="module")
def owned(org_a, victim) -> dict[str, str]:
    """One resource of org A per kind of tenant resource (path parameter name)."""
    return {"sandbox_id": victim["id"], "snapshot_id": new_snapshot(org_a),
            "image_id": new_image(org_a)}


def state_of(api: Api, owned: dict[str, str]) -> dict:
    out = {}
    for param, rid in owned.items():
        for url in READERS[param]:
            r = api.get(url.format(rid))
            assert r.status_code == 200, r.text
            doc = r.json()
            out[url] = len(doc["items"]) if "/events" in url else doc  # history length
    return out


def tenant_routes(spec: Spec):
    """Org-key routes that address one resource by id."""
    return [(m, p, op) for m, p, op in spec.ops()
            if "{" in p and needs_auth(op) and not is_admin(op)]


# ---- tests ----------------------------------------------------------------------------------

def test_every_tenant_route_is_404_for_another_org(tstack, spec, org_a, org_b, owned):
    routes = tenant_routes(spec)
    assert {("GET", SANDBOX_PREFIX), ("DELETE", SANDBOX_PREFIX), ("POST", SANDBOX_PREFIX + "/stop"),
            ("GET", SANDBOX_PREFIX + "/events")} <= {(m, p) for m, p, _ in routes}
    before = state_of(org_a, owned)
    assert before["/v1/sandboxes/{}"]["state"] == "running"
    b_before = len(org_b["api"].get("/v1/sandboxes", params={"limit": 500}).json()["items"])
    a_auth, b_auth = f"Bearer {tstack.creds.api_key}", f"Bearer {org_b['key']}"
    no_route = assert_problem(org_b["api"].get("/v1/sandboxes/x/no-such-route"), 404)["detail"]
    failures, tried = [], []
    for method, path, op in routes:
        params = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
        unknown = [p for p in params if p not in MAKERS and p not in SCALARS]
        if unknown:
            failures.append(f"{method} {path}: no org-A resource for {unknown}; add to MAKERS")
            continue
        for accept in (None, "text/event-stream") if streams(op) else (None,):
            where = f"{method} {path}" + (" (SSE)" if accept else "")
            tried.append(where)
            # control: the same request by the owner, on scratch resources, is valid and
            # reaches the handler, so B's 404 below comes from the ownership check
            scratch = {p: MAKERS[p](org_a) if p in MAKERS else SCALARS[p] for p in params}
            own = org_a.request(**spec.request(method, path, op, scratch, a_auth, accept))
            if own.status_code in (401, 403, 404, 405, 422):
                failures.append(f"{where}: the owner's request failed with {own.status_code} "
                                f"(fix Spec.minimal for this route): {own.text[:300]}")
                continue
            r = org_b["api"].request(**spec.request(method, path, op, {**owned, **SCALARS},
                                                    b_auth, accept))
            # exactly what anyone gets for an id that does not exist: nothing reveals it
            ghost = org_b["api"].request(**spec.request(
                method, path, op, {p: str(uuid.uuid4()) if p in MAKERS else SCALARS[p]
                                   for p in params}, b_auth, accept))
            try:
                body = assert_problem(r, 404, where)
                ghost_body = assert_problem(ghost, 404, where + " (unknown id)")
                assert ({k: body[k] for k in ("type", "title", "detail")}
                        == {k: ghost_body[k] for k in ("type", "title", "detail")}), where
                assert not any(owned[p] in r.text for p in params if p in owned), where
                assert tstack.creds.org_id not in r.text, where
                assert body["detail"] != no_route, f"{where}: the route itself was not found"
            except AssertionError as e:
                failures.append(str(e))
            after = state_of(org_a, owned)
            if after != before:
                failures.append(f"{where}: org A's resources changed: {before} -> {after}")
                before = after
    # nothing was made in B's org from A's resources (a fork, say)
    b_after = len(org_b["api"].get("/v1/sandboxes", params={"limit": 500}).json()["items"])
    assert b_after == b_before, "B gained sandboxes while touching A's resources"
    assert not failures, "\n".join(failures)
    assert len(tried) >= 5


def test_lists_never_show_another_orgs_sandboxes(tstack, spec, org_a, org_b, victim, owned):
    b = org_b["api"]
    # B may use A's sandbox name: names are unique per org, not globally
    mine = b.post("/v1/sandboxes?wait=true", json={"name": victim["name"]})
    assert mine.status_code == 201, mine.text
    mine = mine.json()
    assert mine["org_id"] == org_b["id"] and mine["id"] != victim["id"]

    def listing(**params) -> list[dict]:
        """Every item of B's list with `params`, once B's own sandbox shows as running
        there (the list is a read model that catches up with the ledger)."""
        deadline = time.monotonic() + 10
        while True:
            seen, cursor = [], None
            while True:
                page = b.get("/v1/sandboxes", params={**params, **({"cursor": cursor} if cursor else {})})
                assert page.status_code == 200, page.text
                seen += page.json()["items"]
                cursor = page.json()["next_cursor"]
                if not cursor:
                    break
            if any(x["id"] == mine["id"] and x["state"] == "running" for x in seen):
                return seen
            assert time.monotonic() < deadline, f"B's own sandbox is missing from {params}"
            time.sleep(0.05)

    for params in ({"limit": 1}, {"limit": 500}, {"state": "running"}, {"name": victim["name"]}):
        seen = listing(**params)
        assert all(x["org_id"] == org_b["id"] for x in seen), (params, seen)
        assert victim["id"] not in [x["id"] for x in seen], params
        assert len(seen) == len({x["id"] for x in seen}), params
    assert [x["id"] for x in listing(name=victim["name"])] == [mine["id"]]
    # and A's name filter still finds only A's
    assert [x["id"] for x in org_a.get("/v1/sandboxes", params={"name": victim["name"]}
                                       ).json()["items"]] == [victim["id"]]

    # a cursor minted for A's listing does not page A's data for B
    assert org_a.post("/v1/sandboxes?wait=true", json={}).status_code == 201
    deadline = time.monotonic() + 10  # the list is a read model: it catches up
    while not (a_page := org_a.get("/v1/sandboxes", params={"limit": 1}).json())["next_cursor"]:
        assert time.monotonic() < deadline, "A's list never showed two sandboxes"
        time.sleep(0.05)
    r = b.get("/v1/sandboxes", params={"limit": 10, "cursor": a_page["next_cursor"]})
    if r.status_code == 200:
        assert all(x["org_id"] == org_b["id"] for x in r.json()["items"]), r.text
    else:
        assert_problem(r, 400)

    # every other org-scoped collection (usage, ...) served by the gateway
    b_auth = f"Bearer {org_b['key']}"
    for method, path, op in spec.ops():
        if method != "GET" or "{" in path or not needs_auth(op) or is_admin(op):
            continue
        kw = spec.request(method, path, op, {}, b_auth)
        if streams(op):  # everything since long ago, then what it sends live
            kw["params"]["since"] = "2000-01-01T00:00:00Z"
            r = sample(b, kw)
            assert mine["id"] in r.text, path  # not vacuous: B's own events are there
        else:
            r = b.request(**kw)
        assert r.status_code == 200, f"{path}: {r.text[:300]}"
        assert tstack.creds.org_id not in r.text, path
        assert not any(rid in r.text for rid in owned.values()), path


def test_revoked_key_stops_working_within_seconds(tstack, admin, org_b, victim):
    key = admin.post(f"/v1/orgs/{org_b['id']}/api-keys", json={"name": "to-revoke"})
    assert key.status_code == 201, key.text
    doomed = Api(tstack.api_url, key.json()["key"])
    assert doomed.get("/v1/sandboxes").status_code == 200  # warm any cache with "valid"
    r = admin.delete(f"/v1/api-keys/{key.json()['id']}")
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + REVOKE_DEADLINE_S
    while True:
        r = doomed.get("/v1/sandboxes")
        if r.status_code == 401 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert_problem(r, 401, f"revoked key still accepted after {REVOKE_DEADLINE_S}s")
    for _ in range(5):  # and it stays revoked (no instance or cache flapping back)
        assert_problem(doomed.get("/v1/sandboxes"), 401)
    assert_problem(doomed.post("/v1/sandboxes", json={}), 401)
    assert_problem(doomed.get(f"/v1/sandboxes/{victim['id']}"), 401)
    assert org_b["api"].get("/v1/sandboxes").status_code == 200  # B's other key is untouched
    assert_problem(admin.delete(f"/v1/api-keys/{uuid.uuid4()}"), 404)


def test_org_keys_get_403_on_admin_routes_and_admin_keys_on_org_routes(
        tstack, spec, admin, org_a, org_b, victim, owned):
    values = {"org_id": org_b["id"], "key_id": org_b["key_id"], "host_id": tstack.creds.host_id,
              **owned, **SCALARS}
    hosts_before = admin.get("/v1/hosts")
    failures, admin_routes, org_routes = [], 0, 0
    for method, path, op in spec.ops():
        if not needs_auth(op):
            continue
        if scopes(op) == {"org", "admin"}:
            continue  # either key may call it (its scoping is tested on its own)
        if is_admin(op):
            admin_routes += 1
            r = org_a.request(**spec.request(method, path, op, values,
                                             f"Bearer {tstack.creds.api_key}"))
        else:
            org_routes += 1
            r = admin.request(**spec.request(method, path, op, values,
                                             f"Bearer {tstack.creds.admin_key}"))
        try:
            assert_problem(r, 403, f"{method} {path}")
        except AssertionError as e:
            failures.append(str(e))
    assert not failures, "\n".join(failures)
    assert admin_routes >= 4 and org_routes >= 5
    # nothing happened: B's key still works, A's sandbox still runs, hosts unchanged
    assert org_b["api"].get("/v1/sandboxes").status_code == 200
    assert org_a.get(f"/v1/sandboxes/{victim['id']}").json()["state"] == "running"
    if hosts_before.status_code == 200:  # not cordoned/drained by an org key
        def status(doc):
            return {h["host_id"]: h.get("status") for h in doc["items"]}
        assert status(admin.get("/v1/hosts").json()) == status(hosts_before.json())


@pytest.mark.parametrize("auth", [
    None,
    "Bearer crl_00000000_garbagegarbagegarbagegarbagegarbage",
    "Bearer " + "x" * 10240,
    "Bearer crl_",
    "Bearer",
    "Basic YWRtaW46YWRtaW4=",
    "garbage",
], ids=["none", "garbage", "bearer-10KB", "bearer-prefix-only", "bearer-only", "basic", "no-scheme"])
def test_missing_or_bad_credentials_are_401_everywhere(tstack, spec, victim, owned, auth):
    values = {"org_id": tstack.creds.org_id, "key_id": "x", "host_id": tstack.creds.host_id,
              **owned, **SCALARS}
    failures, n = [], 0
    with httpx.Client(base_url=tstack.api_url, timeout=30) as c:
        for method, path, op in spec.ops():
            if not needs_auth(op):
                continue
            n += 1
            r = c.request(**spec.request(method, path, op, values, auth))
            try:
                body = assert_problem(r, 401, f"{method} {path}")
                assert victim["id"] not in r.text, f"{method} {path}"
                assert "x" * 100 not in r.text and len(r.content) < 2048, "echoes the credential"
                assert body["type"].startswith("https://")
            except AssertionError as e:
                failures.append(str(e))
    assert n >= 10 and not failures, "\n".join(failures)


def test_raw_key_without_scheme_is_not_accepted(tstack):
    r = httpx.get(tstack.api_url + "/v1/sandboxes",
                  headers={"Authorization": tstack.creds.api_key})
    assert_problem(r, 401)


def test_idempotency_keys_are_per_org(org_a, org_b):
    key = f"same-{uuid.uuid4().hex}"
    body = {"metadata": {"k": "v"}}
    a = org_a.post("/v1/sandboxes", json=body, headers={"Idempotency-Key": key})
    b = org_b["api"].post("/v1/sandboxes", json=body, headers={"Idempotency-Key": key})
    assert a.status_code == 202 and b.status_code == 202, (a.text, b.text)
    assert a.json()["id"] != b.json()["id"]
    assert a.json()["org_id"] != b.json()["org_id"] == org_b["id"]
    # each org's replay returns its own original
    a2 = org_a.post("/v1/sandboxes", json=body, headers={"Idempotency-Key": key})
    b2 = org_b["api"].post("/v1/sandboxes", json=body, headers={"Idempotency-Key": key})
    assert a2.json()["id"] == a.json()["id"] and b2.json()["id"] == b.json()["id"]
    # a different body under the same key in another org is not a "reuse"
    key2 = f"other-{uuid.uuid4().hex}"
    a3 = org_a.post("/v1/sandboxes", json={"vcpus": 1}, headers={"Idempotency-Key": key2})
    b3 = org_b["api"].post("/v1/sandboxes", json={"vcpus": 2}, headers={"Idempotency-Key": key2})
    assert a3.status_code == b3.status_code == 202, (a3.text, b3.text)
    assert b3.json()["vcpus"] == 2 and b3.json()["org_id"] == org_b["id"]
    # B cannot reach A's sandbox by its (deterministic) id either
    assert_problem(org_b["api"].get(f"/v1/sandboxes/{a.json()['id']}"), 404)

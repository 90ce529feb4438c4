"""The unmodified `e2b` SDK (pinned in the test extras) against Corral's
E2B-compatible API, configured only by the environment variables that
`.corral/dev.env` holds: create with metadata and envs, get_info, list
(metadata and state filters), set_timeout, pause, connect (resumes), kill.
FAKE driver: the control plane; envd (commands, files) is not served yet."""
import os
import uuid
from datetime import UTC, datetime

import e2b  # a test dependency (pyproject test extras): missing is a failure, not a skip
import httpx
import pytest

from corral_sdk.config import read_env_file

from .conftest import running_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("e2bstack"), driver="fake") as st:
        yield st


@pytest.fixture
def e2b_env(stack, tmp_path, monkeypatch):
    """What `set -a; . .corral/dev.env` gives a shell."""
    path = tmp_path / "dev.env"
    stack.write_env_file(path)
    env = read_env_file(path)
    assert {"E2B_API_URL", "E2B_SANDBOX_URL", "E2B_API_KEY"} <= set(env)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("E2B_DOMAIN", raising=False)
    return env


def test_create_info_list_timeout_pause_connect_kill(e2b_env):
    from e2b import Sandbox, SandboxQuery, SandboxState
    run = uuid.uuid4().hex[:8]
    sb = Sandbox.create(metadata={"run": run, "who": "e2b"}, envs={"A": "1"}, timeout=600)
    other = Sandbox.create(template="base", metadata={"run": run, "who": "other"})
    info = sb.get_info()
    assert info.sandbox_id == sb.sandbox_id and info.template_id == "base"
    assert info.metadata == {"run": run, "who": "e2b"} and info.state == SandboxState.RUNNING
    assert (info.end_at - datetime.now(UTC)).total_seconds() > 500

    def listed(**query):
        pager = Sandbox.list(query=SandboxQuery(**query), limit=500)
        found = []
        while pager.has_next:
            found += pager.next_items()
        return {s.sandbox_id for s in found}
    assert listed(metadata={"run": run}) == {sb.sandbox_id, other.sandbox_id}
    assert listed(metadata={"run": run, "who": "e2b"}) == {sb.sandbox_id}

    sb.set_timeout(30)
    assert (sb.get_info().end_at - datetime.now(UTC)).total_seconds() < 60

    assert sb.pause() is not False
    assert Sandbox.get_info(sb.sandbox_id).state == SandboxState.PAUSED
    assert listed(metadata={"run": run}, state=[SandboxState.PAUSED]) == {sb.sandbox_id}
    assert listed(metadata={"run": run}, state=[SandboxState.RUNNING]) == {other.sandbox_id}
    back = Sandbox.connect(sb.sandbox_id, timeout=900)  # resumes it
    assert back.sandbox_id == sb.sandbox_id
    info = back.get_info()
    assert info.state == SandboxState.RUNNING
    assert (info.end_at - datetime.now(UTC)).total_seconds() > 800

    assert sb.kill() is True and other.kill() is True
    assert Sandbox.kill(sb.sandbox_id) is False  # already gone: E2B says False
    with pytest.raises(e2b.SandboxNotFoundException):
        Sandbox.get_info(sb.sandbox_id)
    assert listed(metadata={"run": run}) == set()


def test_errors_reach_the_e2b_sdk_as_its_own_exceptions(e2b_env, monkeypatch):
    from e2b import Sandbox
    with pytest.raises(e2b.SandboxNotFoundException):
        Sandbox.get_info("no-such-sandbox")
    with pytest.raises(e2b.SandboxException) as ei:  # Corral has no such image
        Sandbox.create(template="no-such-template")
    assert "no-such-template" in str(ei.value)
    monkeypatch.setenv("E2B_API_KEY", "crl_not_a_key")
    with pytest.raises(e2b.AuthenticationException):
        Sandbox.create()


def test_the_api_speaks_e2b_json_and_honours_tenancy(stack, e2b_env):
    url, key = e2b_env["E2B_API_URL"], e2b_env["E2B_API_KEY"]
    with httpx.Client(base_url=url, timeout=60) as http:
        r = http.get("/sandboxes/nope", headers={"X-API-KEY": key})
        assert r.status_code == 404
        body = r.json()
        assert body["code"] == 404 and body["message"] and body["op_id"]
        assert http.get("/v2/sandboxes").status_code == 401  # no key
        r = http.post("/v2/sandboxes", headers={"X-API-KEY": key}, json={"templateID": "Bad Name"})
        assert r.status_code == 400 and r.json()["code"] == 400
        r = http.post("/v2/sandboxes", headers={"X-API-KEY": key},
                      json={"templateID": "base", "metadata": {"t": "x"}})
        assert r.status_code == 201, r.text
        sid = r.json()["sandboxID"]
        admin = {"Authorization": f"Bearer {stack.creds.admin_key}"}
        org = httpx.post(f"{stack.api_url}/v1/orgs", headers=admin,
                         json={"name": f"o-{uuid.uuid4().hex[:6]}"}).json()
        other = httpx.post(f"{stack.api_url}/v1/orgs/{org['id']}/api-keys", headers=admin,
                           json={"name": "k"}).json()["key"]
        theirs = {"X-API-KEY": other}
        assert http.get(f"/sandboxes/{sid}", headers=theirs).status_code == 404
        assert http.delete(f"/sandboxes/{sid}", headers=theirs).status_code == 404
        assert http.post(f"/sandboxes/{sid}/pause", headers=theirs).status_code == 404
        assert sid not in {s["sandboxID"] for s in http.get("/v2/sandboxes", headers=theirs).json()}
        r = http.get("/envd/health", headers={"E2b-Sandbox-Id": sid})
        assert r.status_code == 501 and "not implemented" in r.json()["message"]
        assert http.delete(f"/sandboxes/{sid}", headers={"X-API-KEY": key}).status_code == 204
    assert os.environ["E2B_API_URL"].endswith("/e2b")

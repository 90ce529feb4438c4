"""Custom images through REST on the whole stack (real QEMU build VMs): build
with a live log, create sandboxes on the image, other orgs locked out,
clear errors, delete. The heavy network build is in
tests/integration/test_image_build.py; this Dockerfile needs no network."""
from __future__ import annotations

import io
import json
import tarfile
import time
import uuid

import pytest

from .conftest import running_stack
from .stack import Api

pytestmark = [pytest.mark.e2e, pytest.mark.vm]

DOCKERFILE = """\
FROM default
ARG GREETING=hello
ENV GREETING=$GREETING LANG=C.UTF-8
COPY hello.txt /opt/app/
WORKDIR /opt/app
RUN cat hello.txt > copied.txt && echo "$GREETING from the build"
CMD ["python3", "-V"]
"""
TAR = {"Content-Type": "application/x-tar"}


def ctx(dockerfile: str, files: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in {"Dockerfile": dockerfile.encode(), **(files or {})}.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def istack(tmp_path_factory):
    path = tmp_path_factory.mktemp("images")
    with running_stack(path, env={"CORRAL_BUILD_CONCURRENCY": "1",
                                  "CORRAL_IMAGES_DIR": str(path / "custom-images"),
                                  "CORRAL_IMAGE_TEMPLATES": "1/256"}) as st:
        yield st


@pytest.fixture(scope="module")
def api(istack) -> Api:
    return Api(istack.api_url, istack.creds.api_key)


@pytest.fixture(scope="module")
def other(istack) -> Api:
    admin = Api(istack.api_url, istack.creds.admin_key)
    org = admin.post("/v1/orgs", json={"name": f"img-b-{uuid.uuid4().hex[:6]}"}).json()
    key = admin.post(f"/v1/orgs/{org['id']}/api-keys", json={"name": "b"}).json()
    return Api(istack.api_url, key["key"])


def logs(api: Api, image_id: str) -> tuple[str, str, dict]:
    """The build log's text, its final event and that event's data."""
    text, last, data = [], "", {}
    with api.c.stream("GET", f"/v1/images/{image_id}/logs", timeout=300) as r:
        assert r.status_code == 200
        event = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                doc = json.loads(line[6:])
                if event == "log":
                    text.append(doc["text"])
                else:
                    last, data = event, doc
    return "".join(text), last, data


@pytest.fixture(scope="module")
def image(api: Api) -> dict:
    r = api.post("/v1/images", params={"name": "demo", "build_arg": "GREETING=howdy"},
                 content=ctx(DOCKERFILE, {"hello.txt": b"hello from the context\n"}),
                 headers=TAR)
    assert r.status_code == 202, r.text
    img = r.json()
    assert img["state"] == "building" and img["name"] == "demo"
    text, last, data = logs(api, img["id"])
    assert last == "ImageBuilt", (last, data, text)
    assert "howdy from the build" in text and "Step 3/3 (line 6): RUN" in text
    done = api.get(f"/v1/images/{img['id']}").json()
    assert done["state"] == "ready" and done["digest"] == data["digest"]
    return done


def test_the_first_create_restores_from_a_template_made_at_image_ready(istack, api: Api,
                                                                       image: dict):
    ref = "c-" + image["digest"][:40]
    log = istack.state_dir / "logs" / "host_agent.log"
    deadline = time.monotonic() + 240
    while f"template ready for {ref}/1/256" not in log.read_text():
        assert time.monotonic() < deadline, "no template made for the new image"
        time.sleep(0.5)
    r = api.post("/v1/sandboxes?wait=true", json={"image": "demo"})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    events = api.get(f"/v1/sandboxes/{sid}/events", params={"limit": 100}).json()["items"]
    started = [e for e in events if e["type"] == "SandboxStarted"]
    assert [e["start_mode"] for e in started] == ["restore"], started
    assert api.delete(f"/v1/sandboxes/{sid}").status_code == 202


def test_a_sandbox_runs_on_the_built_image(api: Api, image: dict):
    assert image["config"]["env"] == {"GREETING": "howdy", "LANG": "C.UTF-8"}
    assert image["config"]["cwd"] == "/opt/app" and image["config"]["cmd"] == ["python3", "-V"]
    assert image["size_bytes"] > 0 and image["build_ms"] > 0
    assert [i["id"] for i in api.get("/v1/images").json()["items"]] == [image["id"]]
    r = api.post("/v1/sandboxes?wait=true", json={"image": "demo", "env": {"MODE": "x"}})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    out = api.post(f"/v1/sandboxes/{sid}/exec", json={
        "cmd": ["sh", "-c", 'pwd; cat copied.txt; echo "$GREETING $MODE"']}).json()
    assert out["exit_code"] == 0, out
    assert out["stdout"].splitlines() == ["/opt/app", "hello from the context", "howdy x"]
    assert api.delete(f"/v1/sandboxes/{sid}").status_code == 202


def test_another_org_neither_sees_nor_uses_the_image(api: Api, other: Api, image: dict):
    assert other.get(f"/v1/images/{image['id']}").status_code == 404
    assert other.get(f"/v1/images/{image['id']}/logs").status_code == 404
    assert other.delete(f"/v1/images/{image['id']}").status_code == 404
    assert other.get("/v1/images").json()["items"] == []
    ref = "c-" + image["digest"][:40]
    for name in ("demo", ref):
        r = other.post("/v1/sandboxes", json={"image": name})
        assert r.status_code == 422 and "no image" in r.json()["detail"], r.text
    r = other.post("/v1/images", params={"name": "mine"}, headers=TAR,
                   content=ctx("FROM demo\nRUN true\n"))
    assert r.status_code == 422 and "FROM demo" in r.json()["detail"], r.text


@pytest.mark.parametrize("body,headers,params,status,needle", [
    (ctx("FROM default\nRUN true\nSHELL [\"/bin/bash\"]\n"), TAR, {"name": "x1"}, 422,
     "line 3: unsupported instruction 'SHELL'"),
    (b"not a tar" * 100, TAR, {"name": "x2"}, 422, "not a readable tar"),
    (ctx("FROM default\n"), {"Content-Type": "application/json"}, {"name": "x3"}, 415, ""),
    (ctx("FROM default\n"), TAR, {"name": "Bad_Name"}, 422, ""),
    (ctx("FROM default\n"), TAR, {"name": "default"}, 409, "built-in"),
    (ctx("FROM default\n"), TAR, {"name": "x4", "dockerfile": "nope/Dockerfile"}, 422,
     "not a file in the build context"),
])
def test_bad_builds_are_clear_problems(api: Api, image, body, headers, params, status, needle):
    r = api.post("/v1/images", params=params, content=body, headers=headers)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["op_id"] == r.headers["x-op-id"] and needle in r.json()["detail"]
    assert params["name"] not in [i["name"] for i in api.get("/v1/images").json()["items"]]


def test_a_failing_run_is_a_502_naming_the_line_and_frees_the_name(api: Api, image):
    r = api.post("/v1/images", params={"name": "broken", "wait": "true"}, headers=TAR,
                 content=ctx("FROM default\nRUN echo nope >&2; exit 4\n"))
    assert r.status_code == 502, r.text
    failure = r.json()["failure"]
    assert failure["line"] == 2 and "exited with 4" in failure["message"]
    assert "nope" in failure["message"]
    assert api.post("/v1/sandboxes", json={"image": "broken"}).status_code == 422
    taken = api.post("/v1/images", params={"name": "demo"}, headers=TAR,
                     content=ctx("FROM default\n"))
    assert taken.status_code == 409, taken.text


def test_delete_makes_the_image_unusable(api: Api, image):
    r = api.delete(f"/v1/images/{image['id']}")
    assert r.status_code == 202 and r.json()["state"] in ("deleting", "deleted")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if api.get(f"/v1/images/{image['id']}").json()["state"] == "deleted":
            break
        time.sleep(0.1)
    assert api.get(f"/v1/images/{image['id']}").json()["state"] == "deleted"
    assert api.post("/v1/sandboxes", json={"image": "demo"}).status_code == 422
    assert image["id"] not in [i["id"] for i in api.get("/v1/images").json()["items"]]


def test_builds_beyond_the_orgs_concurrency_are_429(api: Api, image):
    first = api.post("/v1/images", params={"name": "slow"}, headers=TAR,
                     content=ctx("FROM default\nRUN sleep 3\n"))
    assert first.status_code == 202, first.text
    second = api.post("/v1/images", params={"name": "slow2"}, headers=TAR,
                      content=ctx("FROM default\nRUN true\n"))
    assert second.status_code == 429 and int(second.headers["retry-after"]) > 0, second.text
    _, last, _ = logs(api, first.json()["id"])
    assert last == "ImageBuilt"
    again = api.post("/v1/images", params={"name": "slow2", "wait": "true"}, headers=TAR,
                     content=ctx("FROM default\nRUN true\n"))
    assert again.status_code == 201, again.text


def test_the_cli_builds_lists_and_removes(istack, api: Api, tmp_path):
    import os
    import subprocess
    import sys
    ctx_dir = tmp_path / "ctx"
    ctx_dir.mkdir()
    (ctx_dir / "Dockerfile.dev").write_text("FROM default\nCOPY note.txt /opt/\n")
    (ctx_dir / "note.txt").write_text("from the cli\n")
    env = {**os.environ, "CORRAL_API_URL": istack.api_url,
           "CORRAL_API_KEY": istack.creds.api_key}

    def corral(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "corral", *args], env=env,
                              capture_output=True, text=True, timeout=300)
    r = corral("image", "build", "-t", "clidemo", "-f", "Dockerfile.dev", str(ctx_dir))
    assert r.returncode == 0, r.stderr
    assert "Step 1/1 (line 2): COPY note.txt /opt/" in r.stderr
    assert " clidemo ready " in r.stdout
    assert "clidemo" in corral("image", "ls").stdout
    bad = corral("image", "build", "-t", "clibad", str(ctx_dir))  # no ./Dockerfile
    assert bad.returncode == 1 and "Dockerfile is not a file" in bad.stderr
    assert corral("image", "rm", "clidemo").returncode == 0
    assert api.post("/v1/sandboxes", json={"image": "clidemo"}).status_code == 422

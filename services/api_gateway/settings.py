from __future__ import annotations

from pydantic import Field, field_validator

from common.settings import CommonSettings

from .application.op_limits import parse_op_limits


class GatewaySettings(CommonSettings):
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    # The edge's limits: request headers complete within this of connecting (or
    # of the last response), a body that stalls this long is cut (408), at most
    # this many connections and requests at once (503 beyond).
    http_header_timeout_s: float = Field(default=10.0, gt=0, le=300)
    http_body_idle_s: float = Field(default=30.0, gt=0, le=600)
    http_max_concurrency: int = Field(default=1000, ge=1)
    # facts folded at once (one sandbox's stay in order)
    ingest_concurrency: int = Field(default=8, ge=1, le=64)
    auth_cache_s: float = Field(default=5.0, ge=0, le=300)
    wait_timeout_s: float = Field(default=120.0, gt=0, le=600)
    ttl_warning_s: float = Field(default=60.0, ge=0, le=86400)
    expiry_interval_s: float = Field(default=1.0, gt=0, le=60)
    quota_max_live: int = Field(default=50, ge=1)
    quota_max_vcpus: int = Field(default=8, ge=1, le=64)
    quota_max_memory_mib: int = Field(default=16384, ge=64)
    quota_creates_per_minute: int = Field(default=120, ge=1)
    # Per org and gateway instance: `kind=concurrency/per_minute` over the
    # defaults exec=32/600,files=16/600,snapshot=2/10,fork=4/60.
    quota_ops: str = ""
    # Per org, across instances: snapshots held (not deleted or failed), their
    # bytes (RAM + disk; an estimate while pending), and the default lifetime.
    quota_max_snapshots: int = Field(default=20, ge=0)
    quota_max_snapshot_mib: int = Field(default=20480, ge=0)
    snapshot_ttl_s: int = Field(default=7 * 86400, ge=60, le=365 * 86400)
    # Image builds, per org: at once, images held, each build VM's size and time,
    # and the largest build context (or OCI archive) accepted.
    build_concurrency: int = Field(default=2, ge=1, le=64)
    max_images: int = Field(default=50, ge=1)
    build_vcpus: int = Field(default=1, ge=1, le=16)
    build_memory_mib: int = Field(default=1024, ge=256, le=65536)
    build_timeout_s: int = Field(default=1800, ge=10, le=86400)
    build_context_max_mib: int = Field(default=64, ge=1, le=4096)
    max_file_mib: int = Field(default=256, ge=1, le=65536,
                              description="largest file an upload or download carries")
    # Seals sandbox env values (32 bytes, base64url; `corral secrets` makes one).
    # Empty: one is generated under state_dir (a single-machine stack only).
    secrets_key: str = Field(default="", repr=False)

    @field_validator("quota_ops")
    @classmethod
    def _ops(cls, v: str) -> str:
        parse_op_limits(v)
        return v

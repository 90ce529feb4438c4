from __future__ import annotations

from pydantic import Field

from common.settings import CommonSettings


class GatewaySettings(CommonSettings):
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    auth_cache_s: float = Field(default=5.0, ge=0, le=300)
    wait_timeout_s: float = Field(default=120.0, gt=0, le=600)
    ttl_warning_s: float = Field(default=60.0, ge=0, le=86400)
    expiry_interval_s: float = Field(default=1.0, gt=0, le=60)
    quota_max_live: int = Field(default=50, ge=1)
    quota_max_vcpus: int = Field(default=8, ge=1, le=64)
    quota_max_memory_mib: int = Field(default=16384, ge=64)
    quota_creates_per_minute: int = Field(default=120, ge=1)
    # Seals sandbox env values (32 bytes, base64url; `corral secrets` makes one).
    # Empty: one is generated under state_dir (a single-machine stack only).
    secrets_key: str = Field(default="", repr=False)

from __future__ import annotations

from pydantic import Field

from common.settings import CommonSettings


class GatewaySettings(CommonSettings):
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    auth_cache_s: float = Field(default=5.0, ge=0, le=300)
    wait_timeout_s: float = Field(default=120.0, gt=0, le=600)

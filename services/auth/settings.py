"""Auth service settings (CORRAL_* environment)."""
from __future__ import annotations

from pydantic import Field

from common.settings import CommonSettings


class AuthSettings(CommonSettings):
    # NATS queue group: every instance joins it, so requests are load-shared.
    auth_queue: str = "auth"
    # Requests larger than this are refused as invalid before parsing.
    auth_max_request_bytes: int = Field(default=16384, ge=1024, le=1048576)

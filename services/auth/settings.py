"""Auth service settings (CORRAL_* environment)."""
from __future__ import annotations

from pydantic import Field

from common.settings import CommonSettings


class AuthSettings(CommonSettings):
    # NATS queue group: every instance joins it, so requests are load-shared.
    auth_queue: str = "auth"
    # Requests larger than this are refused as invalid before parsing.
    auth_max_request_bytes: int = Field(default=16384, ge=1024, le=1048576)
    # The bus: the callout's signing key (an account nkey seed; its public key is
    # the NATS server's `auth_callout.issuer`), the system user's password (to
    # cut a revoked host's connections), the services' password digests.
    bus_issuer_seed: str = Field(default="", repr=False)
    bus_system_password: str = Field(default="", repr=False)
    bus_service_digests: str = Field(default="", repr=False)

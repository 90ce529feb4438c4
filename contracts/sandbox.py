"""Sandbox lifecycle events."""
from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .envelope import NAME_RE, Envelope, Id

# env and metadata together (keys and values, UTF-8): what a create may carry
MAX_ENV_METADATA_BYTES = 64 * 1024
STATES = ("requested", "scheduled", "starting", "running", "paused", "stopping",
          "stopped", "destroyed", "failed", "lost")


class NetworkSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    egress: bool = False


class SandboxSpec(BaseModel):
    """What a user asked for. Validated at the API and again by consumers."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    image: str = Field(default="default", min_length=1, max_length=63)
    name: str | None = None
    vcpus: int = Field(default=1, ge=1, le=64)
    memory_mib: int = Field(default=256, ge=64, le=262144)
    ttl_seconds: int = Field(default=900, ge=10, le=30 * 86400)
    env: dict[str, str] = Field(default_factory=dict, max_length=128)
    metadata: dict[str, str] = Field(default_factory=dict, max_length=64)
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    snapshot_id: Id | None = None  # start from this snapshot (a fork) instead of the image

    @field_validator("name", "image")
    @classmethod
    def _dns_label(cls, v: str | None) -> str | None:
        if v is not None and not NAME_RE.match(v):
            raise ValueError("must be a DNS label: 1-63 of a-z 0-9 '-', no leading/trailing '-'")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            if not k or len(k) > 256 or "=" in k or "\0" in k or "\0" in val or len(val) > 32768:
                raise ValueError(f"invalid environment variable {k[:64]!r}")
        return v

    @field_validator("metadata")
    @classmethod
    def _meta(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            if not 1 <= len(k) <= 63 or len(val) > 256:
                raise ValueError("metadata keys are 1-63 chars, values at most 256")
        return v

    @model_validator(mode="after")
    def _total_size(self) -> SandboxSpec:
        size = sum(len(k.encode()) + len(v.encode())
                   for d in (self.env, self.metadata) for k, v in d.items())
        if size > MAX_ENV_METADATA_BYTES:
            raise ValueError(f"env and metadata together hold {size} bytes; "
                             f"at most {MAX_ENV_METADATA_BYTES}")
        return self


class Failure(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    code: str = Field(min_length=1, max_length=64)
    message: str = Field(max_length=2000)


class SandboxEvent(Envelope):
    sandbox_id: Id
    org_id: Id


class SandboxRequested(SandboxEvent):
    type: Literal["SandboxRequested"] = "SandboxRequested"
    spec: SandboxSpec
    request_hash: str = Field(min_length=1, max_length=128)
    pin_host_id: Id | None = None  # must run there (a fork: the snapshot lives there)
    # The spec's env values never travel in events: the gateway holds them and
    # the host that starts the sandbox fetches them (`spec.env` is empty here).
    secret_env: bool = False


class SandboxScheduled(SandboxEvent):
    type: Literal["SandboxScheduled"] = "SandboxScheduled"
    host_id: Id


class SandboxStarting(SandboxEvent):
    type: Literal["SandboxStarting"] = "SandboxStarting"
    host_id: Id


class SandboxStarted(SandboxEvent):
    type: Literal["SandboxStarted"] = "SandboxStarted"
    host_id: Id
    vcpus: int = Field(ge=1)
    memory_mib: int = Field(ge=1)
    accel: str = Field(max_length=16)
    ip: str | None = None
    boot_ms: int | None = Field(default=None, ge=0)
    start_mode: Literal["cold", "restore", "pool"] | None = None


class SandboxFailed(SandboxEvent):
    type: Literal["SandboxFailed"] = "SandboxFailed"
    host_id: str | None = None
    failure: Failure


class SandboxStopRequested(SandboxEvent):
    type: Literal["SandboxStopRequested"] = "SandboxStopRequested"


class SandboxStopped(SandboxEvent):
    type: Literal["SandboxStopped"] = "SandboxStopped"
    host_id: str | None = None


class SandboxDestroyRequested(SandboxEvent):
    type: Literal["SandboxDestroyRequested"] = "SandboxDestroyRequested"
    reason: Literal["user", "ttl_expired"] = "user"


class SandboxDestroyed(SandboxEvent):
    type: Literal["SandboxDestroyed"] = "SandboxDestroyed"
    host_id: str | None = None


class SandboxPauseRequested(SandboxEvent):
    type: Literal["SandboxPauseRequested"] = "SandboxPauseRequested"


class SandboxPaused(SandboxEvent):
    type: Literal["SandboxPaused"] = "SandboxPaused"
    host_id: Id


class SandboxResumeRequested(SandboxEvent):
    type: Literal["SandboxResumeRequested"] = "SandboxResumeRequested"


class SandboxResumed(SandboxEvent):
    type: Literal["SandboxResumed"] = "SandboxResumed"
    host_id: Id


class SandboxStartRequested(SandboxEvent):
    """Start a stopped sandbox again, on the host that holds its disk."""
    type: Literal["SandboxStartRequested"] = "SandboxStartRequested"


class SandboxExpiring(SandboxEvent):
    """The lease ends soon; extend it with POST /v1/sandboxes/{id}/ttl."""
    type: Literal["SandboxExpiring"] = "SandboxExpiring"
    expires_at: datetime


class SandboxTtlExtended(SandboxEvent):
    type: Literal["SandboxTtlExtended"] = "SandboxTtlExtended"
    expires_at: datetime
    ttl_seconds: int = Field(ge=10, le=30 * 86400)


class SandboxLost(SandboxEvent):
    type: Literal["SandboxLost"] = "SandboxLost"
    host_id: Id
    reason: str = Field(max_length=500)


class SandboxRecovered(SandboxEvent):
    """A sandbox recorded lost is running on its host after all: adopted back.
    `lost_at` is when it was recorded lost (metering counts the gap)."""
    type: Literal["SandboxRecovered"] = "SandboxRecovered"
    host_id: Id
    state: Literal["starting", "running", "paused", "stopping"]
    lost_at: datetime
    vcpus: int = Field(ge=1)
    memory_mib: int = Field(ge=1)

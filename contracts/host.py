"""Host fleet events."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .envelope import Envelope, Id


class HostCapacity(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    vcpus: int = Field(ge=1)
    memory_mib: int = Field(ge=64)
    max_sandboxes: int = Field(ge=1)


class HostEvent(Envelope):
    host_id: Id


class HostRegistered(HostEvent):
    type: Literal["HostRegistered"] = "HostRegistered"
    hostname: str = Field(max_length=253)
    capacity: HostCapacity
    accel: str = Field(max_length=16)
    agent_version: str = Field(max_length=64)


class HostHeartbeat(HostEvent):
    type: Literal["HostHeartbeat"] = "HostHeartbeat"
    seq: int = Field(ge=0)
    accel: str = Field(max_length=16)
    capacity: HostCapacity
    running: int = Field(ge=0)
    used_vcpus: int = Field(ge=0)
    used_memory_mib: int = Field(ge=0)
    warnings: list[str] = Field(default_factory=list, max_length=32)
    interval_s: float = Field(gt=0, le=300)
    # warm pools per "image/vcpus/memory_mib": target, ready, hits, misses
    pools: dict[str, dict[str, int]] = Field(default_factory=dict, max_length=64)


class HostRevoked(HostEvent):
    """An administrator revoked the host's credentials: never placed on again."""
    type: Literal["HostRevoked"] = "HostRevoked"
    reason: str = Field(default="revoked by an administrator", max_length=500)


class HostLost(HostEvent):
    type: Literal["HostLost"] = "HostLost"
    last_seen: str
    timeout_s: float = Field(gt=0)

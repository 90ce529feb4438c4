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


class BusProbe(Envelope):
    """A scheduler instance's probe of its own reading of the host stream:
    written there (on one subject, whoever writes it) and read back through
    the same reader, it shows the stream takes writes and the reader gets them."""
    type: Literal["BusProbe"] = "BusProbe"
    instance: str = Field(min_length=1, max_length=64)


class HostLost(HostEvent):
    type: Literal["HostLost"] = "HostLost"
    last_seen: str
    timeout_s: float = Field(gt=0)


MAX_INVENTORY = 10000


class InventoryItem(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    sandbox_id: Id
    org_id: Id
    state: Literal["starting", "running", "paused", "stopping"]


class HostInventory(HostEvent):
    """What a host holds resources for, for anti-entropy: published at start-up,
    after its bus connection comes back and every inventory interval."""
    type: Literal["HostInventory"] = "HostInventory"
    sandboxes: list[InventoryItem] = Field(default_factory=list, max_length=MAX_INVENTORY)
    builds: list[Id] = Field(default_factory=list, max_length=256)  # image builds under way
    # commands not yet delivered to the host, read just before the snapshot
    # (None: unknown). Only with 0 may what the inventory lacks be taken as gone:
    # a start still queued for the host is not in it yet.
    commands_pending: int | None = Field(default=None, ge=0)


class HostReconciled(HostEvent):
    """The scheduler corrected its view of a host against the host's inventory
    (each correction is also its own event: SandboxRecovered, SandboxLost, a
    command). Lists are capped; the counts are exact."""
    type: Literal["HostReconciled"] = "HostReconciled"
    inventory_id: str = Field(max_length=64)
    adopted: list[Id] = Field(default_factory=list, max_length=1000)
    destroyed: list[Id] = Field(default_factory=list, max_length=1000)
    lost: list[Id] = Field(default_factory=list, max_length=1000)
    released: list[Id] = Field(default_factory=list, max_length=1000)
    counts: dict[str, int] = Field(default_factory=dict, max_length=8)

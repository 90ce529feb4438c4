from __future__ import annotations

import os
import socket
from typing import Literal

from pydantic import Field

from common.settings import CommonSettings


class HostAgentSettings(CommonSettings):
    host_token: str = Field(default="", repr=False)
    hostname: str = socket.gethostname()
    driver: Literal["qemu", "fake"] = "qemu"
    capacity_vcpus: int = Field(default_factory=lambda: max(1, (os.cpu_count() or 1) * 4), ge=1)
    capacity_memory_mib: int = Field(default=16384, ge=64)
    max_sandboxes: int = Field(default=32, ge=1)
    heartbeat_interval_s: float = Field(default=2.0, gt=0, le=60)
    command_concurrency: int = Field(default=8, ge=1, le=256)
    network: bool = True
    bridge: str = Field(default="corral0", pattern=r"^[a-z][a-z0-9]{0,11}$")
    subnet: str = "10.88.0.0/16"

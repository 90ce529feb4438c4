from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from common.settings import CommonSettings

CLASSES = r"^([a-z0-9-]+/\d+/\d+)?(,[a-z0-9-]+/\d+/\d+)*$"  # image/vcpus/memory_mib,...
POOLS = r"^([a-z0-9-]+/\d+/\d+=\d+)?(,[a-z0-9-]+/\d+/\d+=\d+)*$"  # class=N,...


class HostAgentSettings(CommonSettings):
    host_token: str = Field(default="", repr=False)
    hostname: str = socket.gethostname()
    driver: Literal["qemu", "fake"] = "qemu"
    capacity_vcpus: int = Field(default_factory=lambda: max(1, (os.cpu_count() or 1) * 4), ge=1)
    capacity_memory_mib: int = Field(default=16384, ge=64)
    max_sandboxes: int = Field(default=32, ge=1)
    heartbeat_interval_s: float = Field(default=2.0, gt=0, le=60)
    # what this host runs, for the scheduler's anti-entropy check
    inventory_interval_s: float = Field(default=10.0, ge=1, le=3600)
    command_concurrency: int = Field(default=8, ge=1, le=256)
    templates: bool = True  # restore creates from snapshot templates
    template_dir: Path | None = None  # default: beside the image cache (shared, content-keyed)
    # classes "image/vcpus/memory_mib" whose templates are built at start
    prebuild_templates: str = Field(default="default/1/256", pattern=CLASSES)
    # warm pools: "image/vcpus/memory_mib=N,...": restored VMs kept paused, ready to assign
    warm_pool: str = Field(default="", pattern=POOLS)
    network: bool = True
    bridge: str = Field(default="corral0", pattern=r"^[a-z][a-z0-9]{0,11}$")
    subnet: str = "10.88.0.0/16"
    # Egress: comma-separated CIDRs no guest reaches, on top of the private,
    # link-local and reserved ranges and the control plane's own addresses...
    egress_deny: str = ""
    # ...and, if set, the only destinations egress reaches (may be private).
    egress_allow: str = ""
    # Privilege separation: the agent (not root) asks the helper (root) on this
    # socket for bridge, TAP, nft, cgroup and jail steps; the helper serves
    # only this uid. Unset: the agent does them itself and must be root.
    helper_socket: Path | None = None
    # A VM or snapshot is refused (no_space) unless this much disk stays free.
    min_free_disk_mib: int = Field(default=2048, ge=0)
    agent_uid: int | None = Field(default=None, ge=1)
    # Image builds: the nameserver RUN steps use (default: this host's first);
    # the largest build context; the layer cache's size before old layers go.
    build_resolver: str | None = Field(default_factory=lambda: host_resolver())
    build_context_max_mib: int = Field(default=64, ge=1, le=4096)
    images_dir: Path | None = None  # custom images and layers (default: beside the built-in)
    # size classes "vcpus/memory_mib,..." whose templates a new image gets as soon
    # as it is built (otherwise on its first create, as any class)
    image_templates: str = Field(default="", pattern=r"^(\d+/\d+)?(,\d+/\d+)*$")
    layer_cache_mib: int = Field(default=20480, ge=0)

    @field_validator("build_resolver")
    @classmethod
    def _resolver(cls, v: str | None) -> str | None:
        if v:
            ipaddress.ip_address(v)
        return v or None

    @field_validator("egress_deny", "egress_allow")
    @classmethod
    def _cidrs(cls, v: str) -> str:
        for item in cidr_list(v):
            ipaddress.ip_network(item, strict=False)  # ValueError names the bad one
        return v


def host_resolver() -> str | None:
    try:
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                return parts[1]
    except OSError:
        pass
    return None


def cidr_list(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def size_classes(text: str) -> list[tuple[str, int, int]]:
    out = []
    for item in filter(None, text.split(",")):
        image, vcpus, mem = item.split("=")[0].split("/")
        out.append((image, int(vcpus), int(mem)))
    return out


def pool_targets(text: str) -> dict[tuple[str, int, int], int]:
    return {cls: int(item.split("=")[1])
            for cls, item in zip(size_classes(text), filter(None, text.split(",")), strict=True)}

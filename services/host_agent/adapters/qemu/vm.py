"""One VM as the driver knows it: the running record, its `vm.json`, the
resource kinds recorded for it, and the network lease it holds."""
from __future__ import annotations

import asyncio
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from services.host_agent.application.ports import ResourceRecorder, VmSpec

from .agent_client import AgentClient
from .cmdline import VmLayout
from .qmp import QmpClient
from .templates import LaunchParams

SANDBOX_ID_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,62}$")
HOSTNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MAX_SOCKET_PATH = 107  # sun_path
# Resource kinds recorded per sandbox (value None = removed).
K_DIR, K_OVERLAY, K_QMP, K_AGENT, K_PID, K_TAP, K_LEASE = (
    "dir", "overlay", "qmp_socket", "agent_socket", "pid", "tap", "lease")
# Only recorded when they differ from the sandbox id (a VM adopted from the warm
# pool keeps its QEMU `-name` and its network lease's key).
K_VMNAME, K_NETID = "vm_name", "net_id"
VM_META = "vm.json"  # in the VM dir: vm_name, net_id, launch params


class NetLeaseLike(Protocol):
    @property
    def tap(self) -> str: ...
    @property
    def mac(self) -> str: ...
    @property
    def ip(self) -> str: ...
    @property
    def gateway(self) -> str: ...
    @property
    def prefix_len(self) -> int: ...
    @property
    def egress(self) -> bool: ...


class Network(Protocol):
    """The host network (adapters.network.HostNetwork): a port per sandbox."""

    async def allocate(self, sandbox_id: str, egress: bool) -> NetLeaseLike: ...
    async def release(self, sandbox_id: str) -> None: ...
    async def reconcile(self, known: dict[str, Any]) -> dict[str, list[str]]:
        """`known`: net id -> lease (from `lease_from_record` or `allocate`)."""
        ...
    def lease_from_record(self, sandbox_id: str, value: str) -> NetLeaseLike: ...
    async def teardown(self) -> None: ...


def lease_record(lease: NetLeaseLike) -> str:
    """The whole lease as one durable value, so a restarted agent can rebuild it."""
    return "|".join((lease.tap, lease.mac, lease.ip, lease.gateway, str(lease.prefix_len),
                     "1" if lease.egress else "0"))


def recorded_lease(res: dict[str, str]) -> str | None:
    """The lease value of a resource record, unless only its key was recorded."""
    value = res.get(K_LEASE)
    return value if value and not value.startswith("pending|") else None


def net_identity(lease: NetLeaseLike | None) -> dict[str, object] | None:
    if lease is None:
        return None
    return {"mac": lease.mac, "ip": lease.ip, "prefix_len": lease.prefix_len,
            "gateway": lease.gateway}


def guest_hostname(spec: VmSpec) -> str:
    """The sandbox's name where it is a valid hostname, else one from its id:
    every sandbox (a fork, a clone) has its own."""
    if spec.name and HOSTNAME_RE.match(spec.name):
        return spec.name
    return "sb-" + spec.sandbox_id.replace("-", "")[:12].lower()


@dataclass
class Vm:
    sandbox_id: str
    layout: VmLayout
    pid: int
    accel: str
    qmp: QmpClient | None = None
    agent: AgentClient | None = None
    proc: asyncio.subprocess.Process | None = None  # None when adopted
    ip: str | None = None
    launch: LaunchParams | None = None
    vm_name: str = ""  # QEMU -name suffix and original dir name; "" = sandbox_id
    net_id: str = ""   # key of the network lease; "" = sandbox_id
    mac: str | None = None
    pending: bool = False  # restored, identity not yet handed off
    hostname: str | None = None
    incoming: dict[str, object] | None = None  # while pending: {"state", "ignore_shared"}

    def __post_init__(self) -> None:
        self.vm_name = self.vm_name or self.sandbox_id
        self.net_id = self.net_id or self.sandbox_id

    @property
    def control(self) -> tuple[QmpClient, AgentClient]:
        """QMP and the guest agent channel of a connected VM."""
        if self.qmp is None or self.agent is None:
            raise RuntimeError(f"{self.sandbox_id} is not connected")
        return self.qmp, self.agent

    async def close_channels(self) -> None:
        for c in (self.agent, self.qmp):
            if c is not None:
                await c.close()


def write_meta(vm: Vm) -> None:
    meta = {"vm_name": vm.vm_name, "net_id": vm.net_id,
            "launch": vm.launch.to_dict() if vm.launch else None,
            "pending_identity": vm.pending, "hostname": vm.hostname,
            "incoming": vm.incoming if vm.pending else None}
    tmp = vm.layout.dir / (VM_META + ".tmp")
    tmp.write_text(json.dumps(meta))
    os.rename(tmp, vm.layout.dir / VM_META)


def read_meta(d: Path) -> dict:
    try:
        meta = json.loads((d / VM_META).read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


class SandboxRecorder:
    """Records one sandbox's resources durably and remembers what this start
    created, so a failed start removes exactly that (compensation)."""

    def __init__(self, record: ResourceRecorder, sandbox_id: str) -> None:
        self._record, self.sandbox_id = record, sandbox_id
        self.created: dict[str, str] = {}

    async def __call__(self, kind: str, value: str | None) -> None:
        if value is None:
            self.created.pop(kind, None)
        else:
            self.created[kind] = value
        await self._record(self.sandbox_id, kind, value)


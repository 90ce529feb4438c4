"""The subject map, every JetStream stream and every durable consumer.

`ensure_topology` creates them idempotently; every service calls it at start.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Events: corral.evt.<family>.<...ids>.<Type>
SANDBOX_EVENTS = "corral.evt.sandbox.>"
HOST_EVENTS = "corral.evt.host.>"
USAGE_EVENTS = "corral.evt.usage.>"
HOST_COMMANDS = "corral.cmd.host.>"
DLQ = "corral.dlq.>"

# Request/reply (core NATS)
RPC_AUTH_VERIFY = "corral.rpc.auth.verify"
RPC_AUTH_CREATE_ORG = "corral.rpc.auth.orgs.create"
RPC_AUTH_CREATE_KEY = "corral.rpc.auth.keys.create"
RPC_AUTH_REVOKE_KEY = "corral.rpc.auth.keys.revoke"
RPC_AUTH_CREATE_HOST_TOKEN = "corral.rpc.auth.hosts.token"
RPC_AUTH_REGISTER_HOST = "corral.rpc.auth.hosts.register"
AUTH_REVOKED = "corral.bcast.auth.revoked"  # core fan-out: drop caches now
# Fleet administration, answered by any scheduler instance (queue group "scheduler")
RPC_SCHEDULER_HOSTS_LIST = "corral.rpc.scheduler.hosts.list"
RPC_SCHEDULER_HOSTS_CORDON = "corral.rpc.scheduler.hosts.cordon"
RPC_SCHEDULER_HOSTS_UNCORDON = "corral.rpc.scheduler.hosts.uncordon"
RPC_SCHEDULER_HOSTS_DRAIN = "corral.rpc.scheduler.hosts.drain"
# Usage line items of one org, answered by any billing instance (queue group "billing")
RPC_BILLING_USAGE = "corral.rpc.billing.usage"


def host_rpc_subject(host_id: str, op: str) -> str:
    """Gateway -> one host agent: op is exec, exec.stream, files.put, files.get, files.list."""
    return f"corral.rpc.host.{host_id}.{op}"


def sandbox_subject(org_id: str, sandbox_id: str, type_: str) -> str:
    return f"corral.evt.sandbox.{org_id}.{sandbox_id}.{type_}"


def host_subject(host_id: str, type_: str) -> str:
    return f"corral.evt.host.{host_id}.{type_}"


def usage_subject(org_id: str, sandbox_id: str) -> str:
    return f"corral.evt.usage.{org_id}.{sandbox_id}.UsageRecorded"


def host_command_subject(host_id: str, sandbox_id: str, type_: str) -> str:
    return f"corral.cmd.host.{host_id}.{sandbox_id}.{type_}"


def dlq_subject(consumer: str) -> str:
    return f"corral.dlq.{consumer}"


def subject_for(msg: Any) -> str:
    kind = msg.type
    if kind.startswith(("Sandbox", "Snapshot")):
        return sandbox_subject(msg.org_id, msg.sandbox_id, kind)
    if kind.startswith("Host"):
        return host_subject(msg.host_id, kind)
    if kind == "UsageRecorded":
        return usage_subject(msg.org_id, msg.sandbox_id)
    if kind in ("StartSandbox", "StopSandbox", "DestroySandbox", "PauseSandbox",
                "ResumeSandbox", "TakeSnapshot", "DeleteSnapshot"):
        return host_command_subject(msg.host_id, msg.sandbox_id, kind)
    raise ValueError(f"no subject for {kind}")


@dataclass(frozen=True)
class StreamDef:
    name: str
    subjects: tuple[str, ...]
    max_age_s: float = 30 * 86400
    max_msgs_per_subject: int = -1
    duplicate_window_s: float = 600
    description: str = ""


@dataclass(frozen=True)
class ConsumerDef:
    stream: str
    durable: str
    filter_subjects: tuple[str, ...]
    ack_wait_s: float = 10
    max_deliver: int = 8
    max_ack_pending: int = 256
    description: str = ""
    extra: dict = field(default_factory=dict)


STREAMS: tuple[StreamDef, ...] = (
    StreamDef("CORRAL_SANDBOX", (SANDBOX_EVENTS,), description="sandbox lifecycle facts"),
    StreamDef("CORRAL_HOST", (HOST_EVENTS,), max_age_s=7 * 86400, max_msgs_per_subject=1000,
              description="host registration, heartbeats, loss"),
    StreamDef("CORRAL_USAGE", (USAGE_EVENTS,), max_age_s=400 * 86400, description="metering"),
    StreamDef("CORRAL_HOSTCMD", (HOST_COMMANDS,), max_age_s=86400,
              description="commands to one host agent, on that host's subject"),
    StreamDef("CORRAL_DLQ", (DLQ,), max_age_s=30 * 86400, description="dead letters"),
)


def _sandbox_types(*types: str) -> tuple[str, ...]:
    return tuple(f"corral.evt.sandbox.*.*.{t}" for t in types)


CONSUMERS: tuple[ConsumerDef, ...] = (
    ConsumerDef("CORRAL_SANDBOX", "gateway-sandbox-ingest", (SANDBOX_EVENTS,), max_deliver=200,
                description="gateway folds every sandbox fact into the Sandbox aggregate"),
    ConsumerDef("CORRAL_SANDBOX", "scheduler-placement",
                filter_subjects=_sandbox_types("SandboxRequested", "SandboxStopRequested",
                               "SandboxDestroyRequested", "SandboxDestroyed", "SandboxFailed",
                               "SandboxStopped", "SandboxPauseRequested",
                               "SandboxResumeRequested", "SandboxStartRequested",
                               "SnapshotRequested", "SnapshotDeleteRequested"),
                max_deliver=1000,
                description="scheduler places requests and routes stop/destroy to hosts"),
    ConsumerDef("CORRAL_HOST", "scheduler-hosts", ("corral.evt.host.*.HostRegistered",),
                description="scheduler tracks host liveness and capacity"),
    ConsumerDef("CORRAL_SANDBOX", "billing-metering",
                _sandbox_types("SandboxStarted", "SandboxStopped", "SandboxDestroyed",
                               "SandboxLost", "SandboxFailed"),
                description="billing turns run time into UsageRecorded"),
)


def consumer(durable: str) -> ConsumerDef:
    """One of the shared durable consumers, by name."""
    for c in CONSUMERS:
        if c.durable == durable:
            return c
    raise KeyError(durable)


def host_agent_consumer(host_id: str) -> ConsumerDef:
    return ConsumerDef("CORRAL_HOSTCMD", f"host-{host_id}", (f"corral.cmd.host.{host_id}.>",),
                       ack_wait_s=10, max_ack_pending=64,
                       description=f"commands for host {host_id}")

"""The subject map, every JetStream stream and every durable consumer.

`ensure_topology` creates them idempotently; every service calls it at start.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

# Events: corral.evt.<family>.<...ids>.<Type>
SANDBOX_EVENTS = "corral.evt.sandbox.>"  # published by the control plane
# Sandbox and snapshot facts a host reports, under that host's own id:
# corral.evt.hostfact.<host_id>.<org_id>.<sandbox_id>.<Type>
HOST_FACT_PREFIX = "corral.evt.hostfact."
# What a host may report about the sandboxes placed on it (nothing else).
HOST_FACT_TYPES = ("SandboxStarting", "SandboxStarted", "SandboxFailed", "SandboxStopped",
                   "SandboxDestroyed", "SandboxPaused", "SandboxResumed", "SnapshotCreated",
                   "SnapshotFailed", "SnapshotDeleted", "ImageBuildLogged", "ImageBuilt",
                   "ImageBuildFailed", "ImageDeleted")
HOST_FACTS = HOST_FACT_PREFIX + ">"
HOST_EVENTS = "corral.evt.host.>"
# Schedulers' probes of the host stream (host ids are UUIDs: never "bus-probe")
BUS_PROBE = "corral.evt.host.bus-probe.BusProbe"
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
# An org's Stripe customer, and the Stripe push's parked lines (admin, via the gateway)
RPC_BILLING_CUSTOMER_GET = "corral.rpc.billing.customer.get"
RPC_BILLING_CUSTOMER_SET = "corral.rpc.billing.customer.set"
RPC_BILLING_PARKED = "corral.rpc.billing.parked.list"
RPC_BILLING_RETRY = "corral.rpc.billing.parked.retry"
# An org's monthly vCPU-seconds cap and how much of it is used (the gateway, on creates)
RPC_BILLING_SPEND = "corral.rpc.billing.spend.get"
RPC_BILLING_SPEND_CAP = "corral.rpc.billing.spend.cap"


RPC_AUTH_REVOKE_HOST = "corral.rpc.auth.hosts.revoke"
# A host fetches the env of a sandbox it starts from the gateway, on its own subject.
RPC_GATEWAY_ENV_PREFIX = "corral.rpc.gateway.env"


# A host fetches the build context of an image it builds, in parts, the same way.
RPC_GATEWAY_BUILDCTX_PREFIX = "corral.rpc.gateway.buildctx"


def gateway_env_subject(host_id: str) -> str:
    return f"{RPC_GATEWAY_ENV_PREFIX}.{host_id}"


def gateway_buildctx_subject(host_id: str) -> str:
    return f"{RPC_GATEWAY_BUILDCTX_PREFIX}.{host_id}"


def service_inbox(service: str) -> str:
    """The inbox prefix of a control-plane service (replies only it can read)."""
    return f"_INBOX_{service}"


# A host agent connects to the bus as this user, with its host token as password.
HOST_BUS_USER = "host"


def host_inbox(host_token: str) -> str:
    """A host's inbox prefix, derived from its token: the agent knows it before
    it knows its host id, and the auth service grants exactly this prefix."""
    return "_INBOX_H" + hashlib.sha256(host_token.encode()).hexdigest()[:24]


def host_rpc_subject(host_id: str, op: str) -> str:
    """Gateway -> one host agent: op is exec, exec.stream, files.put, files.get, files.list,
    files.op."""
    return f"corral.rpc.host.{host_id}.{op}"


def sandbox_subject(org_id: str, sandbox_id: str, type_: str) -> str:
    return f"corral.evt.sandbox.{org_id}.{sandbox_id}.{type_}"


def host_fact_subject(host_id: str, org_id: str, sandbox_id: str, type_: str) -> str:
    return f"corral.evt.hostfact.{host_id}.{org_id}.{sandbox_id}.{type_}"


def sandbox_of_subject(subject: str) -> str:
    """The sandbox id in a sandbox event or host fact subject (both put it
    just before the type): the key that orders one sandbox's facts."""
    parts = subject.split(".")
    return parts[-2] if len(parts) >= 2 else subject


def host_subject(host_id: str, type_: str) -> str:
    return f"corral.evt.host.{host_id}.{type_}"


def usage_subject(org_id: str, sandbox_id: str) -> str:
    return f"corral.evt.usage.{org_id}.{sandbox_id}.UsageRecorded"


def spend_subject(org_id: str) -> str:
    return f"corral.evt.usage.{org_id}.spend.SpendThresholdCrossed"


def host_command_subject(host_id: str, sandbox_id: str, type_: str) -> str:
    return f"corral.cmd.host.{host_id}.{sandbox_id}.{type_}"


def dlq_subject(consumer: str) -> str:
    return f"corral.dlq.{consumer}"


def host_relay_dead_letters(host_id: str) -> str:
    """Where a host agent's relay parks a fact the bus will not take."""
    return f"host-{host_id}-relay"


def subject_for(msg: Any, via_host: str | None = None) -> str:
    """`via_host`: the publisher is that host agent: its facts go on its own subject."""
    kind = msg.type
    if kind.startswith("Image") and msg.KIND == "event":  # the image id in the sandbox slot
        if via_host is not None:
            return host_fact_subject(via_host, msg.org_id, msg.image_id, kind)
        return sandbox_subject(msg.org_id, msg.image_id, kind)
    if kind in ("BuildImage", "DeleteImage"):
        return host_command_subject(msg.host_id, msg.image_id, kind)
    if kind.startswith(("Sandbox", "Snapshot")) and msg.KIND == "event":
        if via_host is not None:
            return host_fact_subject(via_host, msg.org_id, msg.sandbox_id, kind)
        return sandbox_subject(msg.org_id, msg.sandbox_id, kind)
    if kind.startswith("Host"):
        return host_subject(msg.host_id, kind)
    if kind == "BusProbe":
        return BUS_PROBE
    if kind == "UsageRecorded":
        return usage_subject(msg.org_id, msg.sandbox_id)
    if kind == "SpendThresholdCrossed":
        return spend_subject(msg.org_id)
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
    StreamDef("CORRAL_SANDBOX", (SANDBOX_EVENTS, HOST_FACTS),
              description="sandbox lifecycle facts: the control plane's, and the hosts'"),
    StreamDef("CORRAL_HOST", (HOST_EVENTS,), max_age_s=7 * 86400, max_msgs_per_subject=1000,
              description="host registration, heartbeats, loss"),
    StreamDef("CORRAL_USAGE", (USAGE_EVENTS,), max_age_s=400 * 86400, description="metering"),
    StreamDef("CORRAL_HOSTCMD", (HOST_COMMANDS,), max_age_s=86400,
              description="commands to one host agent, on that host's subject"),
    StreamDef("CORRAL_DLQ", (DLQ,), max_age_s=30 * 86400, description="dead letters"),
)


def _sandbox_types(*types: str) -> tuple[str, ...]:
    return tuple(f"corral.evt.sandbox.*.*.{t}" for t in types)


def _host_fact_types(*types: str) -> tuple[str, ...]:
    return tuple(f"corral.evt.hostfact.*.*.*.{t}" for t in types)


CONSUMERS: tuple[ConsumerDef, ...] = (
    ConsumerDef("CORRAL_SANDBOX", "gateway-sandbox-ingest", (SANDBOX_EVENTS, HOST_FACTS),
                max_deliver=200,
                description="gateway folds every sandbox fact into the Sandbox aggregate"),
    ConsumerDef("CORRAL_SANDBOX", "scheduler-placement",
                filter_subjects=_sandbox_types(
                    "SandboxRequested", "SandboxStopRequested", "SandboxDestroyRequested",
                    "SandboxPauseRequested", "SandboxResumeRequested", "SandboxStartRequested",
                    "SnapshotRequested", "SnapshotDeleteRequested", "ImageBuildRequested",
                    "ImageDeleteRequested")
                + _host_fact_types("SandboxDestroyed", "SandboxFailed", "SandboxStopped",
                                   "ImageBuilt", "ImageBuildFailed"),
                max_deliver=1000,
                description="scheduler places requests and image builds, and routes "
                            "stop/destroy to hosts"),
    ConsumerDef("CORRAL_HOST", "scheduler-hosts",
                ("corral.evt.host.*.HostRegistered", "corral.evt.host.*.HostRevoked",
                 "corral.evt.host.*.HostInventory"),
                description="scheduler tracks hosts and reconciles what they run"),
    ConsumerDef("CORRAL_SANDBOX", "billing-metering",
                _sandbox_types("SandboxScheduled", "SandboxLost", "SandboxDestroyed",
                               "SandboxFailed", "SandboxRecovered")
                + _host_fact_types("SandboxStarted", "SandboxStopped", "SandboxDestroyed",
                                   "SandboxFailed", "SnapshotCreated", "SnapshotDeleted",
                                   "SnapshotFailed"),
                description="billing turns run time and snapshot storage into UsageRecorded"),
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

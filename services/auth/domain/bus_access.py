"""Who may do what on the bus: the NATS permissions of each principal.

Every principal reads replies only on an inbox prefix of its own, publishes
only what its role produces and subscribes only to what it consumes.
JetStream API access is limited to the streams and the durable consumers the
role uses; a host agent reaches nothing but its own command consumer, its
own subjects and the two calls a host makes (register, fetch an env).
"""
from __future__ import annotations

from dataclasses import dataclass

from contracts import subjects as s

SERVICES = ("gateway", "scheduler", "billing", "ops")
STREAM_NAMES = tuple(d.name for d in s.STREAMS)
SERVICE_TTL_S = 24 * 3600
HOST_TTL_S = 24 * 3600
# a host answers RPCs; a streamed answer (exec output, file chunks) is many
# messages to one reply subject, for as long as the longest exec may run
HOST_RESPONSES = (1_000_000, 3600 + 120)
# a service's answer may be several messages when it is larger than one (in parts)
SERVICE_RESPONSES = (16, 60)


@dataclass(frozen=True)
class Grant:
    name: str  # the connection's user name in the server's monitoring
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    ttl_s: int
    responses: tuple[int, int] | None = None  # (max messages, seconds) per request


def _durable(stream: str, durable: str) -> tuple[str, ...]:
    """Create, inspect, pull from and ack one durable consumer."""
    api = "$JS.API.CONSUMER"
    return (f"{api}.CREATE.{stream}.{durable}", f"{api}.CREATE.{stream}.{durable}.>",
            f"{api}.DURABLE.CREATE.{stream}.{durable}", f"{api}.INFO.{stream}.{durable}",
            f"{api}.MSG.NEXT.{stream}.{durable}", f"$JS.ACK.{stream}.{durable}.>")


def _ephemeral(stream: str) -> tuple[str, ...]:
    """Ordered (ephemeral, push) consumers on a stream: create and flow control
    (never delete: the server reaps idle ones, and a durable must not go)."""
    api = "$JS.API.CONSUMER"
    return (f"{api}.CREATE.{stream}", f"{api}.CREATE.{stream}.>", f"$JS.FC.{stream}.>")


def _streams() -> tuple[str, ...]:
    """Declare the topology (create or update the streams, read their info)."""
    out = ["$JS.API.INFO"]
    for name in STREAM_NAMES:
        out += [f"$JS.API.STREAM.{op}.{name}" for op in ("CREATE", "UPDATE", "INFO")]
    return tuple(out)


def _consumers(*durables: str) -> tuple[str, ...]:
    out: tuple[str, ...] = ()
    for durable in durables:
        out += _durable(s.consumer(durable).stream, durable)
    return out


def service_grant(service: str) -> Grant:
    """The permissions of a control-plane service, by name."""
    inbox = s.service_inbox(service)
    common_pub = (*_streams(), s.DLQ)
    if service == "gateway":
        pub: tuple[str, ...] = (s.SANDBOX_EVENTS, s.RPC_AUTH_VERIFY, s.RPC_AUTH_CREATE_ORG,
               s.RPC_AUTH_CREATE_KEY, s.RPC_AUTH_REVOKE_KEY, s.RPC_AUTH_CREATE_HOST_TOKEN,
               s.RPC_AUTH_REVOKE_HOST, "corral.rpc.scheduler.>", "corral.rpc.billing.>",
               s.host_rpc_subject("*", ">"), *_consumers("gateway-sandbox-ingest"),
               *_ephemeral("CORRAL_SANDBOX"), *_ephemeral("CORRAL_HOST"),
               *_ephemeral("CORRAL_USAGE"))
        sub: tuple[str, ...] = (s.AUTH_REVOKED, f"{s.RPC_GATEWAY_ENV_PREFIX}.*",
                                f"{s.RPC_GATEWAY_BUILDCTX_PREFIX}.*")
    elif service == "scheduler":
        pub = (s.SANDBOX_EVENTS, "corral.evt.host.*.HostLost", "corral.evt.host.*.HostReconciled",
               s.BUS_PROBE, s.HOST_COMMANDS,
               *_consumers("scheduler-placement", "scheduler-hosts"),
               *_ephemeral("CORRAL_HOST"))
        sub = ("corral.rpc.scheduler.>",)
    elif service == "billing":
        pub = (s.USAGE_EVENTS, *_consumers("billing-metering"))
        sub = ("corral.rpc.billing.>",)
    elif service == "ops":  # read-only: inspect streams and consumers, replay any stream
        read = tuple(x for name in STREAM_NAMES for x in _ephemeral(name))
        return Grant(service, ("$JS.API.INFO", "$JS.API.STREAM.INFO.*", "$JS.API.STREAM.NAMES",
                               "$JS.API.STREAM.LIST", "$JS.API.CONSUMER.INFO.*.*",
                               "$JS.API.CONSUMER.NAMES.*", "$JS.API.CONSUMER.LIST.*", *read),
                     (f"{inbox}.>",), SERVICE_TTL_S)
    else:
        raise KeyError(service)
    return Grant(service, (*common_pub, *pub), (f"{inbox}.>", *sub), SERVICE_TTL_S,
                 responses=SERVICE_RESPONSES)


def host_grant(host_id: str, inbox: str) -> Grant:
    """A host agent: its own subjects, its own command consumer, nothing else."""
    durable = s.host_agent_consumer(host_id).durable
    pub = (s.host_subject(host_id, "HostRegistered"), s.host_subject(host_id, "HostHeartbeat"),
           s.host_subject(host_id, "HostInventory"),
           *(s.host_fact_subject(host_id, "*", "*", t) for t in s.HOST_FACT_TYPES),
           s.RPC_AUTH_REGISTER_HOST,
           s.gateway_env_subject(host_id), s.gateway_buildctx_subject(host_id),
           s.dlq_subject(durable),
           s.dlq_subject(s.host_relay_dead_letters(host_id)), "$JS.API.INFO",
           "$JS.API.STREAM.INFO.CORRAL_HOSTCMD", *_durable("CORRAL_HOSTCMD", durable))
    sub = (f"{inbox}.>", s.host_rpc_subject(host_id, ">"))
    return Grant(f"host:{host_id}", pub, sub, HOST_TTL_S, responses=HOST_RESPONSES)

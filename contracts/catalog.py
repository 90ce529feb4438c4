"""Who sends and who answers what on the bus: the facts the bus itself does
not record, kept beside the contracts (and in step with the services) so the
AsyncAPI document can name every sender and responder."""
from __future__ import annotations

from . import billing as bc
from . import procs, rpc
from . import subjects as s

# Who publishes which type on which channel (the bus has no registry of
# senders; keep in step with the services). Receivers are derived from CONSUMERS.
SENDERS: dict[str, dict[str, tuple[str, ...]]] = {
    "api_gateway": {"sandboxEvents": (
        "SandboxRequested", "SandboxStopRequested", "SandboxDestroyRequested",
        "SandboxExpiring", "SandboxTtlExtended", "SandboxPauseRequested",
        "SandboxResumeRequested", "SandboxStartRequested", "SnapshotRequested",
        "SnapshotDeleteRequested", "ImageBuildRequested", "ImageDeleteRequested")},
    "scheduler": {
        "sandboxEvents": ("SandboxScheduled", "SandboxFailed", "SandboxDestroyed", "SandboxLost",
                          "SandboxRecovered", "SnapshotFailed", "SnapshotDeleted",
                          "ImageBuildScheduled", "ImageBuildFailed", "ImageDeleted"),
        "hostEvents": ("HostLost", "HostReconciled"),
        "busProbe": ("BusProbe",),
        "hostCommands": ("StartSandbox", "StopSandbox", "DestroySandbox", "PauseSandbox",
                         "ResumeSandbox", "TakeSnapshot", "DeleteSnapshot", "BuildImage",
                         "DeleteImage")},
    "host_agent": {"hostFacts": s.HOST_FACT_TYPES,
                   "hostEvents": ("HostRegistered", "HostHeartbeat", "HostInventory")},
    "billing": {"usageEvents": ("UsageRecorded",), "spendEvents": ("SpendThresholdCrossed",)},
    "auth": {"hostEvents": ("HostRevoked",)},
}
CONSUMER_OWNERS = {"gateway-": "api_gateway", "scheduler-": "scheduler",
                   "billing-": "billing", "host-": "host_agent"}
# Non-durable subscriptions that are part of the contract all the same.
EXTRA_RECEIVERS = (("scheduler", "corral.evt.host.>",
                    "ordered consumer, deliver last per subject: host liveness (heartbeats, "
                    "and its own probes read back: is the bus flowing)"),)
# (subject, request, reply, responder, queue group, senders)
RPCS = (
    (s.RPC_AUTH_VERIFY, rpc.VerifyKey, rpc.Principal, "auth", "auth", ("api_gateway",)),
    (s.RPC_AUTH_CREATE_ORG, rpc.CreateOrg, rpc.Org, "auth", "auth", ("api_gateway",)),
    (s.RPC_AUTH_CREATE_KEY, rpc.CreateApiKey, rpc.ApiKeyCreated, "auth", "auth", ("api_gateway",)),
    (s.RPC_AUTH_REVOKE_KEY, rpc.RevokeApiKey, rpc.Revoked, "auth", "auth", ("api_gateway",)),
    (s.RPC_AUTH_CREATE_HOST_TOKEN, rpc.CreateHostToken, rpc.HostTokenCreated, "auth", "auth",
     ("api_gateway",)),
    (s.RPC_AUTH_REVOKE_HOST, rpc.RevokeHost, rpc.HostRevokedResult, "auth", "auth",
     ("api_gateway",)),
    (s.gateway_env_subject("{host_id}"), rpc.SandboxEnvRequest, rpc.SandboxEnv, "api_gateway",
     "gateway", ("host_agent",)),
    (s.gateway_buildctx_subject("{host_id}"), rpc.BuildContextRequest, rpc.BuildContextPart,
     "api_gateway", "gateway", ("host_agent",)),
    (s.RPC_AUTH_REGISTER_HOST, rpc.RegisterHost, rpc.HostIdentity, "auth", "auth",
     ("host_agent",)),
    (s.host_rpc_subject("{host_id}", "exec"), rpc.HostExec, rpc.HostExecResult, "host_agent",
     None, ("api_gateway",)),
    (s.host_rpc_subject("{host_id}", "exec.stream"), rpc.HostExecStream, rpc.Done,
     "host_agent", None, ("api_gateway",)),
    (s.host_rpc_subject("{host_id}", "files.put"), rpc.HostFilePut, rpc.Done, "host_agent",
     None, ("api_gateway",)),
    (s.host_rpc_subject("{host_id}", "files.get"), rpc.HostFileGet, rpc.HostFileData,
     "host_agent", None, ("api_gateway",)),
    (s.host_rpc_subject("{host_id}", "files.list"), rpc.HostFileList, rpc.HostFileEntries,
     "host_agent", None, ("api_gateway",)),
    (s.host_rpc_subject("{host_id}", "files.op"), rpc.HostFileOp, rpc.HostFileOpResult,
     "host_agent", None, ("api_gateway",)),
    (s.host_rpc_subject("{host_id}", "proc"), procs.HostProc, procs.HostProcResult,
     "host_agent", None, ("api_gateway",)),
    (s.host_rpc_subject("{host_id}", "proc.stream"), procs.HostProc, rpc.Done,
     "host_agent", None, ("api_gateway",)),
    (s.RPC_SCHEDULER_HOSTS_LIST, rpc.ListHosts, rpc.HostList, "scheduler", "scheduler",
     ("api_gateway",)),
    (s.RPC_SCHEDULER_HOSTS_CORDON, rpc.HostAction, rpc.HostActionResult, "scheduler",
     "scheduler", ("api_gateway",)),
    (s.RPC_SCHEDULER_HOSTS_UNCORDON, rpc.HostAction, rpc.HostActionResult, "scheduler",
     "scheduler", ("api_gateway",)),
    (s.RPC_SCHEDULER_HOSTS_DRAIN, rpc.HostAction, rpc.HostActionResult, "scheduler",
     "scheduler", ("api_gateway",)),
    (s.RPC_BILLING_USAGE, rpc.UsageQuery, rpc.UsagePage, "billing", "billing",
     ("api_gateway",)),
    (s.RPC_BILLING_CUSTOMER_GET, bc.CustomerQuery, bc.CustomerLink, "billing", "billing",
     ("api_gateway",)),
    (s.RPC_BILLING_CUSTOMER_SET, bc.CustomerSet, bc.CustomerLink, "billing", "billing",
     ("api_gateway",)),
    (s.RPC_BILLING_PARKED, bc.ParkedQuery, bc.ParkedPage, "billing", "billing",
     ("api_gateway",)),
    (s.RPC_BILLING_RETRY, bc.RetryParked, bc.RetriedParked, "billing", "billing",
     ("api_gateway",)),
    (s.RPC_BILLING_SPEND, bc.SpendQuery, bc.SpendStatus, "billing", "billing",
     ("api_gateway",)),
    (s.RPC_BILLING_SPEND_CAP, bc.SpendCapSet, bc.SpendStatus, "billing", "billing",
     ("api_gateway",)),
)
DLQ_SENDERS = ("api_gateway", "scheduler", "billing", "host_agent")

"""Request/reply payloads (core NATS, not streamed)."""
from __future__ import annotations

import base64
from datetime import datetime, timedelta
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from .envelope import Id


class RpcModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RpcError(RpcModel):
    error: str  # stable code: "invalid", "not_found", "conflict", "unauthorized", "internal"
    detail: str = ""


class VerifyKey(RpcModel):
    key: str = Field(min_length=1, max_length=256)
    op_id: str = Field(default="-", max_length=64)


class Principal(RpcModel):
    key_id: str
    org_id: str | None
    scope: Literal["org", "admin"]


class AdminRequest(RpcModel):
    """An administration call: `actor_key` is the caller's API key, which the
    auth service checks again for admin scope (whoever relayed the call)."""
    actor_key: str = Field(min_length=1, max_length=256, repr=False)
    op_id: str = Field(default="-", max_length=64)


class CreateOrg(AdminRequest):
    name: str = Field(min_length=1, max_length=100)


class Org(RpcModel):
    id: str
    name: str
    created_at: str


class CreateApiKey(AdminRequest):
    org_id: str | None = None
    name: str = Field(min_length=1, max_length=100)
    scope: Literal["org", "admin"] = "org"


class ApiKeyCreated(RpcModel):
    id: str
    prefix: str
    key: str
    org_id: str | None
    scope: Literal["org", "admin"]


class RevokeApiKey(AdminRequest):
    id: str


class Revoked(RpcModel):
    id: str
    revoked: bool


class CreateHostToken(AdminRequest):
    name: str = Field(default="host", min_length=1, max_length=100)


class HostTokenCreated(RpcModel):
    host_id: str
    token: str


class RevokeHost(AdminRequest):
    """Revoke every token of a host: it can no longer connect, and is disconnected."""
    host_id: Id


class HostRevokedResult(RpcModel):
    host_id: str
    revoked_tokens: int
    disconnected: int


class RegisterHost(RpcModel):
    token: str = Field(min_length=1, max_length=256)
    hostname: str = Field(max_length=253)


class HostIdentity(RpcModel):
    host_id: str


# --- host agent -> gateway: a sandbox's env, held by the gateway only ---
class SandboxEnvRequest(RpcModel):
    sandbox_id: Id
    org_id: Id
    op_id: str = Field(default="-", max_length=64)


class SandboxEnv(RpcModel):
    env: dict[str, str] = Field(default_factory=dict, max_length=128, repr=False)


class BuildContextRequest(RpcModel):
    """A host building `image_id` asks for its context, one part at a time."""
    image_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    org_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    offset: int = Field(ge=0)
    op_id: str = Field(default="-", max_length=64)


class BuildContextPart(RpcModel):
    data_b64: str = Field(repr=False)
    total: int = Field(ge=0)


# --- gateway -> host agent (core NATS request/reply on the host's subject) ---
class HostRequest(RpcModel):
    sandbox_id: str = Field(min_length=1, max_length=64)
    org_id: str = Field(min_length=1, max_length=64)
    op_id: str = Field(default="-", max_length=64)


class HostExec(HostRequest):
    cmd: list[str] = Field(min_length=1, max_length=256)
    env: dict[str, str] = Field(default_factory=dict, max_length=128)
    cwd: str | None = Field(default=None, max_length=4096)
    stdin: str | None = Field(default=None, max_length=1 << 20)
    timeout_s: float = Field(default=60, gt=0, le=3600)
    output_cap: int = Field(default=1 << 20, ge=1024, le=4 << 20)
    user: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_-]{0,31}$|^[0-9]{1,10}$",
                             description="run as this user of the image (name or uid); "
                             "default: the image's user")


class HostExecStream(HostExec):
    """Like HostExec, answered `Done` at once; then the output follows as
    HostExecChunk messages to the same reply inbox, as it is produced."""


class HostExecChunk(RpcModel):
    """One message of a streamed exec: a chunk, then exactly one `exit` or
    `error`; `seq` counts them from 0 so a reader can tell it lost some."""
    stream: Literal["stdout", "stderr", "pty", "events", "start", "exit", "error"]
    seq: int = Field(default=0, ge=0)
    data: str = ""
    data_b64: str | None = Field(default=None, description="a process stream's output bytes")
    pid: int | None = Field(default=None, description="`start`: the process's pid")
    result: HostExecResult | None = None
    error: RpcError | None = None


class HostExecResult(RpcModel):
    exit_code: int | None
    stdout: str
    stderr: str
    duration_ms: int
    timed_out: bool
    truncated: bool


class PathRef(HostRequest):
    """A path in the sandbox: `path` (UTF-8), or `path_b64` (the exact bytes of
    a name that is not UTF-8). Exactly one."""
    path: str | None = Field(default=None, min_length=1, max_length=4096)
    path_b64: str | None = Field(default=None, min_length=4, max_length=5464,
                                 pattern=r"^[A-Za-z0-9+/]+={0,2}$")

    @model_validator(mode="after")
    def _one_path(self) -> PathRef:
        if (self.path is None) == (self.path_b64 is None):
            raise ValueError("give exactly one of path and path_b64")
        return self

    def raw_path(self) -> str | bytes:
        """`path` as it is, or the bytes `path_b64` stands for."""
        return self.path if self.path is not None else base64.b64decode(self.path_b64 or "")


class HostFilePut(PathRef):
    data_b64: str = Field(max_length=6 << 20)
    append: bool = Field(default=False, description="add to the end of an existing file "
                         "(a large upload in pieces) instead of replacing it atomically")


class HostFileGet(PathRef):
    offset: int | None = Field(default=None, ge=0, description="a range from here (with "
                               "`length`) instead of the whole file")
    length: int = Field(default=4 << 20, ge=1, le=4 << 20)


class HostFileData(RpcModel):
    data_b64: str
    total: int | None = Field(default=None, description="a range's file size")


class HostFileList(PathRef):
    pass


class HostFileEntry(RpcModel):
    name: str = Field(description="the name; bytes that are not UTF-8 shown as U+FFFD")
    name_b64: str | None = Field(default=None, description="the exact bytes of a name that "
                                 "is not UTF-8 (use it as `path_b64`)")
    size: int
    is_dir: bool
    mode: int


class HostFileEntries(RpcModel):
    entries: list[HostFileEntry]
    truncated: bool = Field(default=False, description="the directory holds more than listed "
                            "(10,000 entries or 4 MiB of listing at most)")


class HostFileOp(PathRef):
    """stat, mkdir (`parents`), remove (`recursive`), rename (to `to` or `to_b64`)."""
    action: Literal["stat", "mkdir", "remove", "rename"]
    to: str | None = Field(default=None, min_length=1, max_length=4096)
    to_b64: str | None = Field(default=None, min_length=4, max_length=5464,
                               pattern=r"^[A-Za-z0-9+/]+={0,2}$")
    recursive: bool = False
    parents: bool = False

    @model_validator(mode="after")
    def _target(self) -> HostFileOp:
        if (self.action == "rename") != (self.to is not None or self.to_b64 is not None):
            raise ValueError("rename, and only rename, takes `to` or `to_b64`")
        if self.to is not None and self.to_b64 is not None:
            raise ValueError("give at most one of to and to_b64")
        return self

    def raw_to(self) -> str | bytes | None:
        if self.to_b64 is not None:
            return base64.b64decode(self.to_b64)
        return self.to


class HostFileStat(HostFileEntry):
    type: Literal["file", "dir", "symlink", "other"]
    mtime: float = Field(description="last modification, seconds since the epoch")
    target: str | None = Field(default=None, description="a symlink's target")


class HostFileOpResult(RpcModel):
    entry: HostFileStat | None = Field(default=None, description="the path after the "
                                       "operation (none after remove)")


class Done(RpcModel):
    ok: bool = True


HostExecChunk.model_rebuild()


# --- fleet administration (gateway -> scheduler, queue group "scheduler") ---
MAX_USAGE_RANGE = timedelta(days=400)


class ListHosts(RpcModel):
    op_id: str = Field(default="-", max_length=64)


class HostAction(RpcModel):
    """cordon, uncordon or drain one host."""
    host_id: Id
    op_id: str = Field(default="-", max_length=64)


class HostResources(RpcModel):
    vcpus: int = Field(ge=0)
    memory_mib: int = Field(ge=0)
    sandboxes: int = Field(ge=0)


class HostInfo(RpcModel):
    host_id: str
    hostname: str
    status: Literal["ready", "lost", "revoked", "cordoned", "draining"] = Field(
        description="lost: stopped heartbeating; revoked: its credentials were revoked; "
                    "cordoned/draining: no new placements")
    accel: str
    capacity: HostResources
    used: HostResources
    unknown: int = Field(default=0, ge=0, description=(
        "of `used`, sandboxes held since the host was lost: they may still run, so "
        "their capacity is not handed out until the host reports what it runs"))
    alive: bool = Field(description="heartbeating, as seen by the answering scheduler")
    last_heartbeat_age_s: float | None = Field(
        description="seconds since the last heartbeat the answering scheduler saw; "
                    "null if it saw none since it started")


class HostList(RpcModel):
    items: list[HostInfo]


class HostSandbox(RpcModel):
    sandbox_id: str
    org_id: str
    vcpus: int
    memory_mib: int


class HostActionResult(RpcModel):
    host: HostInfo
    changed: bool = Field(description="false: the host already was in that state")
    remaining: list[HostSandbox] = Field(
        description="sandboxes still allocated on the host; they leave as they end")
    note: str = ""


# --- usage (gateway -> billing, queue group "billing") ---
class UsageQuery(RpcModel):
    """Line items of one org overlapping [from, to), oldest first."""
    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True,
                              serialize_by_alias=True)
    org_id: Id
    from_: AwareDatetime = Field(alias="from")
    to: AwareDatetime
    limit: int = Field(default=100, ge=1, le=500)
    cursor: str | None = Field(default=None, max_length=512)
    op_id: str = Field(default="-", max_length=64)

    @model_validator(mode="after")
    def _range(self) -> UsageQuery:
        if self.from_ >= self.to:
            raise ValueError("'from' must be before 'to'")
        if self.to - self.from_ > MAX_USAGE_RANGE:
            raise ValueError("range is longer than 400 days")
        return self


class StripePushLine(RpcModel):
    """One meter event a usage line owes Stripe, and where it is."""
    meter: str = Field(description="the Stripe meter's event_name")
    identifier: str = Field(description="the meter event's identifier: event_id:meter")
    value: str = Field(description="decimal text, at most 6 decimals")
    state: Literal["pending", "sent", "parked"]
    reason: str | None = Field(default=None, description="last failure, or why parked")
    attempts: int = 0


class UsageItem(RpcModel):
    event_id: str = Field(description="the UsageRecorded event_id (stable, idempotency key)")
    sandbox_id: str
    period_start: datetime
    period_end: datetime
    vcpu_seconds: float
    memory_mib_seconds: float
    snapshot_id: str | None = Field(default=None, description="set on a snapshot's storage")
    storage_mib_seconds: float = 0.0
    stripe: list[StripePushLine] = Field(default_factory=list,
                                         description="its Stripe meter events, per meter")


class UsagePage(RpcModel):
    items: list[UsageItem]
    next_cursor: str | None

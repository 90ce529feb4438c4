"""Every message type on the bus, and strict parsing of raw bytes."""
from __future__ import annotations

import json
from typing import Annotated, Union

from pydantic import Field, TypeAdapter, ValidationError

from .commands import DestroySandbox, PauseSandbox, ResumeSandbox, StartSandbox, StopSandbox
from .envelope import Envelope
from .image import (BuildImage, DeleteImage, ImageBuildFailed, ImageBuildLogged,
                    ImageBuildRequested, ImageBuildScheduled, ImageBuilt, ImageDeleted,
                    ImageDeleteRequested)
from .host import (BusProbe, HostHeartbeat, HostInventory, HostLost, HostReconciled, HostRegistered,
                   HostRevoked)
from .sandbox import (SandboxDestroyed, SandboxDestroyRequested, SandboxExpiring, SandboxFailed,
                      SandboxLost, SandboxPaused, SandboxPauseRequested, SandboxRecovered,
                      SandboxRequested,
                      SandboxResumed, SandboxResumeRequested, SandboxScheduled, SandboxStarted,
                      SandboxStarting, SandboxStartRequested, SandboxStopped, SandboxStopRequested,
                      SandboxTtlExtended)
from .snapshot import (DeleteSnapshot, SnapshotCreated, SnapshotDeleted, SnapshotDeleteRequested,
                       SnapshotFailed, SnapshotRequested, TakeSnapshot)
from .subjects import HOST_FACT_PREFIX, HOST_FACT_TYPES, subject_for
from .usage import SpendThresholdCrossed, UsageRecorded

EVENT_TYPES: tuple[type[Envelope], ...] = (
    SandboxRequested, SandboxScheduled, SandboxStarting, SandboxStarted, SandboxFailed,
    SandboxStopRequested, SandboxStopped, SandboxDestroyRequested, SandboxDestroyed,
    SandboxLost, SandboxExpiring, SandboxTtlExtended, SandboxPauseRequested, SandboxPaused,
    SandboxResumeRequested, SandboxResumed, SandboxStartRequested, SandboxRecovered,
    SnapshotRequested, SnapshotCreated, SnapshotFailed, SnapshotDeleteRequested,
    SnapshotDeleted, HostRegistered, HostHeartbeat, HostLost, HostRevoked, HostInventory,
    HostReconciled, BusProbe, UsageRecorded,
    SpendThresholdCrossed, ImageBuildRequested, ImageBuildScheduled, ImageBuildLogged,
    ImageBuilt, ImageBuildFailed, ImageDeleteRequested, ImageDeleted,
)
COMMAND_TYPES: tuple[type[Envelope], ...] = (StartSandbox, StopSandbox, DestroySandbox,
                                              PauseSandbox, ResumeSandbox, TakeSnapshot,
                                              DeleteSnapshot, BuildImage, DeleteImage)
ALL_TYPES = EVENT_TYPES + COMMAND_TYPES
BY_NAME: dict[str, type[Envelope]] = {t.model_fields["type"].default: t for t in ALL_TYPES}

# A union built at run time from the tuple: no `X | Y` spelling exists for it.
Message = Annotated[Union[tuple(ALL_TYPES)], Field(discriminator="type")]  # type: ignore[valid-type]  # noqa: UP007
_adapter: TypeAdapter[Envelope] = TypeAdapter(Message)  # type: ignore[arg-type]


class InvalidMessage(ValueError):
    """A message that no contract accepts. `reason` is safe to log."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def parse_message(raw: bytes, supported_versions: dict[str, int] | None = None,
                  subject: str | None = None) -> Envelope:
    """Validate `raw`. With `subject` (where it was received) the message must
    be what that subject says: a host's fact names its sandbox, org and type
    under the host's own id (which NATS permissions make authentic), and the
    result records that host as `via_host`."""
    msg = _validate(raw, supported_versions)
    if subject is not None:
        via = subject.split(".")[3] if subject.startswith(HOST_FACT_PREFIX) else None
        if via is not None and (msg.type not in HOST_FACT_TYPES
                                or getattr(msg, "host_id", None) != via):
            raise InvalidMessage(f"a host may not report {msg.type} as {via[:64]!r}")
        try:
            expected = subject_for(msg, via)
        except (ValueError, AttributeError):
            expected = None
        if subject != expected:
            raise InvalidMessage(f"{msg.type} does not belong on {subject[:200]!r}")
        msg._via_host = via
    return msg


def _validate(raw: bytes, supported_versions: dict[str, int] | None) -> Envelope:
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidMessage(f"not JSON: {e.__class__.__name__}") from None
    if not isinstance(doc, dict):
        raise InvalidMessage("not a JSON object")
    kind = doc.get("type")
    if kind not in BY_NAME:
        raise InvalidMessage(f"unknown type {str(kind)[:64]!r}")
    version = doc.get("version", 1)
    if isinstance(version, int) and version > (supported_versions or {}).get(kind, 1):
        raise InvalidMessage(f"unsupported version {version} of {kind}")
    try:
        return _adapter.validate_python(doc)
    except ValidationError as e:
        fields = ", ".join(".".join(map(str, err["loc"])) for err in e.errors()[:8])
        raise InvalidMessage(f"invalid {kind}: {fields}") from None

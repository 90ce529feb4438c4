"""Every message type on the bus, and strict parsing of raw bytes."""
from __future__ import annotations

import json
from typing import Annotated, Union

from pydantic import Field, TypeAdapter, ValidationError

from .commands import DestroySandbox, PauseSandbox, ResumeSandbox, StartSandbox, StopSandbox
from .envelope import Envelope
from .host import HostHeartbeat, HostLost, HostRegistered
from .sandbox import (SandboxDestroyed, SandboxDestroyRequested, SandboxExpiring, SandboxFailed,
                      SandboxLost, SandboxPaused, SandboxPauseRequested, SandboxRequested,
                      SandboxResumed, SandboxResumeRequested, SandboxScheduled, SandboxStarted,
                      SandboxStarting, SandboxStartRequested, SandboxStopped, SandboxStopRequested,
                      SandboxTtlExtended)
from .snapshot import (DeleteSnapshot, SnapshotCreated, SnapshotDeleted, SnapshotDeleteRequested,
                       SnapshotFailed, SnapshotRequested, TakeSnapshot)
from .usage import UsageRecorded

EVENT_TYPES: tuple[type[Envelope], ...] = (
    SandboxRequested, SandboxScheduled, SandboxStarting, SandboxStarted, SandboxFailed,
    SandboxStopRequested, SandboxStopped, SandboxDestroyRequested, SandboxDestroyed,
    SandboxLost, SandboxExpiring, SandboxTtlExtended, SandboxPauseRequested, SandboxPaused,
    SandboxResumeRequested, SandboxResumed, SandboxStartRequested,
    SnapshotRequested, SnapshotCreated, SnapshotFailed, SnapshotDeleteRequested,
    SnapshotDeleted, HostRegistered, HostHeartbeat, HostLost, UsageRecorded,
)
COMMAND_TYPES: tuple[type[Envelope], ...] = (StartSandbox, StopSandbox, DestroySandbox,
                                              PauseSandbox, ResumeSandbox, TakeSnapshot,
                                              DeleteSnapshot)
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


def parse_message(raw: bytes, supported_versions: dict[str, int] | None = None) -> Envelope:
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

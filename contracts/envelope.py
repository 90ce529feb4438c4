"""The one envelope every event and command on the bus carries."""
from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# Ids become NATS subject tokens: no dots, wildcards or whitespace.
Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
TRACEPARENT_RE = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class Envelope(BaseModel):
    """Common header. `event_id` is also the `Nats-Msg-Id` of the message."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    KIND: ClassVar[str] = "event"

    event_id: str = Field(default_factory=new_id, min_length=1, max_length=64)
    type: str
    version: int = Field(default=1, ge=1)
    occurred_at: datetime = Field(default_factory=utcnow)
    op_id: str = Field(min_length=1, max_length=64)
    org_id: str | None = Field(default=None, max_length=64)
    traceparent: str | None = None
    # Set by the bus on receipt, never sent: the host whose own subject carried
    # this message (NATS permissions make that subject's host id authentic).
    _via_host: str | None = PrivateAttr(default=None)

    @field_validator("traceparent")
    @classmethod
    def _traceparent(cls, v: str | None) -> str | None:
        if v is not None and not TRACEPARENT_RE.match(v):
            raise ValueError("not a W3C traceparent")
        return v

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("occurred_at must carry a timezone")
        return v

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()

    @property
    def via_host(self) -> str | None:
        """The host that published this message on its own subject, or None when
        a control-plane service published it."""
        return self._via_host

"""Commands sent to one host agent on its own subject."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from .envelope import Envelope
from .sandbox import SandboxSpec

Id = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")


class HostCommand(Envelope):
    KIND: ClassVar[str] = "command"
    host_id: str = Id
    sandbox_id: str = Id
    org_id: str = Id


class StartSandbox(HostCommand):
    type: Literal["StartSandbox"] = "StartSandbox"
    spec: SandboxSpec


class StopSandbox(HostCommand):
    type: Literal["StopSandbox"] = "StopSandbox"


class DestroySandbox(HostCommand):
    type: Literal["DestroySandbox"] = "DestroySandbox"

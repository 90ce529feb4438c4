"""Commands sent to one host agent on its own subject."""
from __future__ import annotations

from typing import ClassVar, Literal

from .envelope import Envelope, Id
from .sandbox import SandboxSpec


class HostCommand(Envelope):
    KIND: ClassVar[str] = "command"
    host_id: Id
    sandbox_id: Id
    org_id: Id


class StartSandbox(HostCommand):
    type: Literal["StartSandbox"] = "StartSandbox"
    spec: SandboxSpec
    restart: bool = False  # boot a stopped VM again from its own disk
    secret_env: bool = False  # fetch the env from the gateway (spec.env is empty)


class StopSandbox(HostCommand):
    type: Literal["StopSandbox"] = "StopSandbox"


class DestroySandbox(HostCommand):
    type: Literal["DestroySandbox"] = "DestroySandbox"


class PauseSandbox(HostCommand):
    type: Literal["PauseSandbox"] = "PauseSandbox"


class ResumeSandbox(HostCommand):
    type: Literal["ResumeSandbox"] = "ResumeSandbox"

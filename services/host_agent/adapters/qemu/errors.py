"""Stable error types raised by the QEMU driver."""
from __future__ import annotations

from guest.protocol import GuestError, GuestPathError


class VmError(RuntimeError):
    """A VM could not be started or controlled."""


class VmNotFound(VmError, KeyError):
    """No running VM is known to this driver for the sandbox id."""


class VmBootTimeout(VmError, TimeoutError):
    """The guest agent did not answer hello in time."""


class AgentUnavailable(VmError, ConnectionError):
    """The guest agent channel is closed or broken."""


class QmpError(VmError):
    """QMP answered with an error or the monitor went away."""


__all__ = [
    "AgentUnavailable",
    "GuestError",
    "GuestPathError",
    "QmpError",
    "VmBootTimeout",
    "VmError",
    "VmNotFound",
]

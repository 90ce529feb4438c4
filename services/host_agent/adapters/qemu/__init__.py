"""QEMU microvm VMM driver."""
from .driver import QemuDriver
from .errors import (AgentUnavailable, GuestError, GuestPathError, QmpError, VmBootTimeout,
                     VmError, VmNotFound)

__all__ = ["QemuDriver", "VmError", "VmNotFound", "VmBootTimeout", "AgentUnavailable",
           "QmpError", "GuestError", "GuestPathError"]

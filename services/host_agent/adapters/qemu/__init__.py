"""QEMU microvm VMM driver."""
from .driver import QemuDriver
from .errors import (AgentUnavailable, GuestError, GuestPathError, QmpError, VmBootTimeout, VmError,
                     VmNotFound)

__all__ = [
                     "AgentUnavailable",
                     "GuestError",
                     "GuestPathError",
                     "QemuDriver",
                     "QmpError",
                     "VmBootTimeout",
                     "VmError",
                     "VmNotFound",
]

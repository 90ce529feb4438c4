"""Fresh entropy for a restored clone: credited to the kernel pool, CRNG reseeded."""
from __future__ import annotations

import fcntl
import os
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING or __package__:
    from .console import log
else:  # inside the guest: the modules sit side by side
    from console import log

RNDADDENTROPY = 0x40085203  # _IOW('R', 0x03, int[2])
RNDRESEEDCRNG = 0x5207      # _IO('R', 0x07)


def add_entropy(data: bytes, credit: bool, fd: int | None = None) -> str:
    """Mix `data` into the kernel pool with credit and force a CRNG reseed.

    A plain write to /dev/urandom mixes without credit and does not reseed:
    two clones of one snapshot would keep producing the same bytes. The
    reseed bumps the CRNG generation, so every per-CPU CRNG rekeys.
    """
    data = bytes(data[:4096])
    own = fd is None
    if fd is None:
        fd = os.open("/dev/urandom", os.O_WRONLY | os.O_CLOEXEC)
    try:
        try:
            bits = len(data) * 8 if credit else 0
            fcntl.ioctl(fd, RNDADDENTROPY, struct.pack("ii", bits, len(data)) + data)
        except OSError as e:
            log(f"RNDADDENTROPY: {e}; falling back to a write")
            os.write(fd, data)
            return "written"
        try:
            fcntl.ioctl(fd, RNDRESEEDCRNG)
        except OSError as e:
            log(f"RNDRESEEDCRNG: {e}")
            return "credited"
        return "reseeded"
    finally:
        if own:
            os.close(fd)

"""The one fact of a qcow2 header the jail needs: its backing file."""
from __future__ import annotations

import struct
from pathlib import Path

MAGIC = b"QFI\xfb"


def backing_file(path: Path) -> str | None:
    """The backing file an overlay names (None: standalone or not qcow2)."""
    with open(path, "rb") as f:
        head = f.read(20)
        if len(head) < 20 or head[:4] != MAGIC:
            return None
        offset, size = struct.unpack(">QI", head[8:20])
        if not offset or not 0 < size <= 4096:
            return None
        f.seek(offset)
        return f.read(size).decode("utf-8", "surrogateescape")

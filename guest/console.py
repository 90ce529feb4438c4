"""The guest agent's diagnostics: one line to stderr (the VM's console)."""
from __future__ import annotations

import os


def log(msg: str) -> None:
    try:
        os.write(2, f"corral-agent: {msg}\n".encode())
    except OSError:
        pass

"""The agent's side of the jail zygote (zygote_main.py): start it once,
then ask it for jailed processes."""
from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
from pathlib import Path

from .spec import JailSpec

log = logging.getLogger("corral.host_agent.jail")
MAIN = Path(__file__).with_name("zygote_main.py")


class JailError(RuntimeError):
    """The jail could not be set up or QEMU could not be executed in it."""


class Zygote:
    """One zygote process (root) per agent; requests are served one at a time."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = asyncio.Lock()

    def _start(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._proc = subprocess.Popen(
            [sys.executable, "-S", "-I", str(MAIN), str(theirs.fileno())],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, start_new_session=True)
        theirs.close()
        ours.setblocking(False)
        self._sock = ours
        return ours

    async def spawn(self, spec: JailSpec, fds: list[int]) -> int:
        """The pid of `spec.argv` running in its jail (JailError if it is not)."""
        if len(fds) != len(spec.fd_targets):
            raise ValueError("one target number per passed fd")
        async with self._lock:
            sock = self._sock if self._alive() else self._start()
            assert sock is not None
            loop = asyncio.get_running_loop()
            socket.send_fds(sock, [json.dumps(spec.to_dict()).encode()], fds)
            reply = json.loads(await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 30))
        if "pid" not in reply:
            raise JailError(f"{spec.vm}: {reply.get('error', 'no answer')}")
        return int(reply["pid"])

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None and self._sock is not None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()  # the zygote exits; the VMs it started live on
            self._sock = None
        if self._proc is not None:
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._proc = None

"""Guest RAM as memory file descriptors. A template's RAM is copied once into
a write-sealed memfd that every clone maps copy-on-write: a QEMU (even a
compromised one) can change its own copy, never the template every later
clone starts from. A template being built gets a fresh, shared memfd whose
contents are saved to the template's file afterwards."""
from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

F_ADD_SEALS = 1033
SEALS = 0x0001 | 0x0002 | 0x0004 | 0x0008  # SEAL, SHRINK, GROW, WRITE
COPY_CHUNK = 64 << 20


class TemplateMemory:
    def __init__(self) -> None:
        self._fds: dict[Path, tuple[tuple[int, int, int], int]] = {}
        self._lock = threading.Lock()

    def sealed(self, path: Path) -> int:
        """The sealed memfd holding `path` (made on first use; call in a thread)."""
        path = path.resolve()
        st = os.stat(path)
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            held = self._fds.get(path)
            if held is not None and held[0] == key:
                return held[1]
            fd = os.memfd_create(f"tpl-{path.parent.name}"[:240],
                                 os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
            try:
                with open(path, "rb") as f:
                    _copy(f.fileno(), fd, st.st_size)
                    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                fcntl.fcntl(fd, F_ADD_SEALS, SEALS)
            except BaseException:
                os.close(fd)
                raise
            if held is not None:
                os.close(held[1])
            self._fds[path] = (key, fd)
            return fd

    def forget(self, keep: set[Path]) -> None:
        """Drop the memfds of templates no longer in use (pruned, rebuilt)."""
        with self._lock:
            for path in [p for p in self._fds if p not in keep]:
                os.close(self._fds.pop(path)[1])

    def close(self) -> None:
        self.forget(set())


def fresh(size: int, name: str) -> int:
    """A shared memfd of `size` bytes for a template being built."""
    fd = os.memfd_create(name[:240], os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    return fd


def save(fd: int, path: Path, size: int) -> None:
    """Write a memfd's contents to `path` (sparse where the guest left zeros)."""
    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        _copy(fd, out, size, sparse=True)
        os.ftruncate(out, size)
    finally:
        os.close(out)


def _copy(src: int, dst: int, size: int, sparse: bool = False) -> None:
    zero = bytes(1 << 20)
    off = 0
    while off < size:
        chunk = os.pread(src, min(COPY_CHUNK, size - off), off)
        if not chunk:
            break
        if sparse:
            for i in range(0, len(chunk), len(zero)):
                piece = chunk[i:i + len(zero)]
                if piece != zero[:len(piece)]:
                    os.pwrite(dst, piece, off + i)
        else:
            os.pwrite(dst, chunk, off)
        off += len(chunk)

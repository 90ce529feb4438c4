"""Watching a directory with inotify (through ctypes: the stdlib has no
binding): a Background whose output is filesystem events, JSON lines of
`{"name": path relative to the watched directory, "op": create | write |
remove | rename | chmod}`. Recursive watches follow new subdirectories.
With nobody attached, events wait (at most MAX_PENDING) for a `poll`."""
from __future__ import annotations

import json
import os
import posixpath
import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING or __package__:
    from . import protocol as P
    from .background import CONN_IDS, Background
else:  # inside the guest: the modules sit side by side
    import protocol as P
    from background import CONN_IDS, Background

IN_MODIFY, IN_ATTRIB, IN_MOVED_FROM, IN_MOVED_TO = 0x2, 0x4, 0x40, 0x80
IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_MOVE_SELF = 0x100, 0x200, 0x400, 0x800
IN_Q_OVERFLOW, IN_IGNORED, IN_ONLYDIR, IN_DONT_FOLLOW = 0x4000, 0x8000, 0x1000000, 0x2000000
IN_ISDIR = 0x40000000
MASK = (IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
        | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW)
OPS = ((IN_CREATE | IN_MOVED_TO, "create"), (IN_MODIFY, "write"),
       (IN_DELETE | IN_DELETE_SELF, "remove"), (IN_MOVED_FROM | IN_MOVE_SELF, "rename"),
       (IN_ATTRIB, "chmod"))
EVENT = struct.Struct("iIII")
MAX_DIRS = 10000
MAX_PENDING = 10000


class _Inotify:
    def __init__(self) -> None:
        try:
            import ctypes
            self.libc = ctypes.CDLL(None, use_errno=True)
            self.ctypes = ctypes
        except (ImportError, OSError):
            raise P.GuestError("ENOSYS", "this image's Python has no ctypes: no watch") from None
        self.fd = self._check(self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))

    def _check(self, r: int) -> int:
        if r < 0:
            e = self.ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return r

    def add(self, path: str) -> int:
        return self._check(self.libc.inotify_add_watch(
            self.fd, path.encode("utf-8", "surrogateescape"), MASK))


class Watch(Background):
    def __init__(self, h: dict) -> None:
        path = P.check_path(h.get("path"))
        if not os.path.isdir(path):
            raise P.GuestError("ENOTDIR" if os.path.exists(path) else "ENOENT",
                               f"{path} is not a directory")
        super().__init__(None, h, [f"watch:{path}"], path, None, next(CONN_IDS))
        self.status = 0  # never reaped: it ends when closed or its directory goes
        self.recursive = bool(h.get("recursive"))
        self.ino = _Inotify()
        self.dirs: dict[int, str] = {}  # wd -> path relative to the root ("" = root)
        self.pending: list[dict[str, Any]] = []
        self.overflowed = False
        self.out = {self.ino.fd: "events"}
        self.stdin_fd = None
        self.ends_unattended = bool(h.get("attach", True))
        try:
            self._add("")
        except BaseException:
            os.close(self.ino.fd)
            raise
        self.root_wd = next(iter(self.dirs))

    def _add(self, rel: str) -> None:
        if len(self.dirs) >= MAX_DIRS:
            self.overflowed = True
            return
        where = posixpath.join(self.cwd, rel) if rel else self.cwd
        try:
            self.dirs[self.ino.add(where)] = rel
        except OSError:
            if not rel:
                raise
            return  # gone already, or not ours to read
        if self.recursive:
            try:
                subdirs = [e.name for e in os.scandir(where)
                           if e.is_dir(follow_symlinks=False)]
            except OSError:
                return
            for name in subdirs:
                self._add(posixpath.join(rel, name))

    def render(self, data: bytes) -> bytes:
        """inotify records in, JSON lines out (and new subdirectories watched)."""
        out: list[dict[str, Any]] = []
        at = 0
        while at + EVENT.size <= len(data):
            wd, mask, _cookie, size = EVENT.unpack_from(data, at)
            raw = data[at + EVENT.size:at + EVENT.size + size].split(b"\0", 1)[0]
            at += EVENT.size + size
            if mask & IN_Q_OVERFLOW:
                self.overflowed = True
                continue
            base = self.dirs.get(wd)
            if base is None:
                continue
            if mask & IN_IGNORED:
                del self.dirs[wd]
                continue
            name = raw.decode("utf-8", "surrogateescape")
            rel = posixpath.join(base, name) if name else base
            if self.recursive and mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO):
                self._add(rel)
            for bits, op in OPS:
                if mask & bits and rel:
                    out.append({"name": rel, "op": op})
        if not self.subs:
            room = MAX_PENDING - len(self.pending)
            self.overflowed = self.overflowed or room < len(out)
            self.pending += out[:max(room, 0)]
            return b""
        return "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in out).encode(
            "utf-8", "surrogateescape") if out else b""

    @property
    def gone(self) -> bool:
        return self.root_wd not in self.dirs  # its directory was removed

    def take(self) -> tuple[list[dict[str, Any]], bool]:
        events, overflowed = self.pending, self.overflowed
        self.pending, self.overflowed = [], False
        return events, overflowed

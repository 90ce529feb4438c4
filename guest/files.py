"""File operations of the guest agent: put (atomic), get and list, with limits."""
from __future__ import annotations

import json
import os
import stat
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING or __package__:
    from . import protocol as P
else:  # inside the guest: the modules sit side by side
    import protocol as P


def put(rid: int, h: dict[str, Any], payload: bytes) -> dict[str, Any]:
    """A whole file, atomically; or, with `append`, more bytes at the end of
    an existing regular file (a large upload in pieces, renamed when done)."""
    path = P.path_arg(h)
    mode = int(h.get("mode", 0o644)) & 0o7777
    if len(payload) > P.MAX_FILE:
        raise P.GuestError("EFBIG", "file too large")
    if h.get("append"):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise P.GuestError("EINVAL", "not a regular file")
            _write_all(fd, payload)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        return {"id": rid, "type": "ok", "size": size}
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = f"{parent}/.corral-put-{rid}-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        _write_all(fd, payload)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    try:
        os.rename(tmp, path)
    except OSError:
        os.unlink(tmp)
        raise
    return {"id": rid, "type": "ok", "size": len(payload)}


def _write_all(fd: int, payload: bytes) -> None:
    view = memoryview(payload)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def get(rid: int, h: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """The whole file (at most `max_bytes`); or, with `offset`, at most
    `max_bytes` of it from there, and its `total` size."""
    path = P.path_arg(h)
    limit = min(int(h.get("max_bytes", P.MAX_FILE)), P.MAX_FILE)
    offset = h.get("offset")
    if offset is not None and (type(offset) is not int or offset < 0):
        raise P.GuestError("EINVAL", "offset must be a non-negative integer")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise P.GuestError("EISDIR", path)
        if not stat.S_ISREG(st.st_mode):
            raise P.GuestError("EINVAL", "not a regular file")
        if offset is not None:
            data = os.pread(fd, limit, offset)
            return {"id": rid, "type": "data", "size": len(data), "total": st.st_size}, data
        if st.st_size > limit:
            raise P.GuestError("EFBIG", f"file is {st.st_size} bytes, limit {limit}")
        chunks, total = [], 0
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                break
            total += len(b)
            if total > limit:
                raise P.GuestError("EFBIG", "file grew past the limit")
            chunks.append(b)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    return {"id": rid, "type": "data", "size": len(data)}, data


def listing(rid: int, h: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """Entries sorted by name, as JSON in the payload: at most MAX_LIST of them
    and MAX_LIST_BYTES of JSON, `truncated` when either cut the list."""
    path = P.path_arg(h)
    names: list[str] = []
    truncated = False
    with os.scandir(path) as it:
        for e in it:
            if len(names) >= P.MAX_LIST:
                truncated = True
                break
            names.append(e.name)
    names.sort()
    entries: list[dict[str, Any]] = []
    size = 2
    for name in names:
        try:
            st = os.lstat(os.path.join(path, name))
        except OSError:
            continue
        entry = {**P.name_fields(name), "size": st.st_size,
                 "is_dir": stat.S_ISDIR(st.st_mode), "mode": st.st_mode}
        size += len(json.dumps(entry)) + 1
        if size > P.MAX_LIST_BYTES:
            truncated = True
            break
        entries.append(entry)
    body = json.dumps(entries, separators=(",", ":")).encode()
    return {"id": rid, "type": "entries", "count": len(entries), "truncated": truncated}, body


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    return "symlink" if stat.S_ISLNK(mode) else "other"


def describe(path: str) -> dict[str, Any]:
    """One entry (not following a final symlink), as `stat` answers it."""
    st = os.lstat(path)
    entry: dict[str, Any] = {**P.name_fields(os.path.basename(path) or "/"), "size": st.st_size,
                             "is_dir": stat.S_ISDIR(st.st_mode), "mode": st.st_mode,
                             "type": _kind(st.st_mode), "mtime": st.st_mtime}
    if stat.S_ISLNK(st.st_mode):
        entry["target"] = os.readlink(path)[:P.MAX_PATH]
    return entry


def _remove(path: str, recursive: bool) -> None:
    if path == "/":
        raise P.GuestError("EINVAL", "refusing to remove /")
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
    elif recursive:
        import shutil  # only here: the agent's start-up stays lean
        shutil.rmtree(path)
    else:
        os.rmdir(path)  # ENOTEMPTY unless empty


def fs(rid: int, h: dict[str, Any]) -> dict[str, Any]:
    """stat, mkdir (`parents`), remove (`recursive`), rename (to `to`/`to_b64`)."""
    action = h.get("action")
    path = P.path_arg(h)
    if action == "stat":
        return {"id": rid, "type": "ok", "entry": describe(path)}
    if action == "mkdir":
        mode = int(h.get("mode", 0o755)) & 0o7777
        if h.get("parents"):
            os.makedirs(path, mode, exist_ok=True)
        else:
            os.mkdir(path, mode)
        return {"id": rid, "type": "ok", "entry": describe(path)}
    if action == "remove":
        _remove(path, bool(h.get("recursive")))
        return {"id": rid, "type": "ok"}
    if action == "rename":
        to = P.path_arg({k[3:]: v for k, v in h.items() if k in ("to_path", "to_path_b64")})
        if path == "/" or to == "/":
            raise P.GuestError("EINVAL", "cannot rename /")
        os.rename(path, to)
        return {"id": rid, "type": "ok", "entry": describe(to)}
    raise P.GuestError("EINVAL", f"unknown fs action {action!r}")

"""Processes the guest agent runs for `exec`: validation and spawn."""
from __future__ import annotations

import errno
import os
import subprocess
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING or __package__:
    from . import protocol as P
else:  # inside the guest: the modules sit side by side
    import protocol as P


class SpawnFailed(Exception):
    """The command could not start: answered like a shell would (126/127)."""

    def __init__(self, exit_code: int, stderr: bytes) -> None:
        super().__init__(stderr.decode(errors="replace"))
        self.exit_code, self.stderr = exit_code, stderr


class Proc:
    def __init__(self, rid: int, popen: subprocess.Popen, cap: int, timeout: float) -> None:
        self.rid = rid
        self.popen = popen
        self.cap = cap
        self.timeout = timeout
        self.sent = {"stdout": 0, "stderr": 0}
        self.truncated = False
        self.timed_out = False
        self.open_streams = 2
        self.status: int | None = None
        self.stdin_buf = b""
        self.started = time.monotonic()
        self.finished = False


def identity(user: str) -> tuple[int, int, list[int], str]:
    """`name`, `uid`, `name:group` or `uid:gid` in this guest's own passwd/group:
    (uid, gid, supplementary groups, home)."""
    import grp
    import pwd
    name, _, group = user.partition(":")
    try:
        pw = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
        uid, gid, home, login = pw.pw_uid, pw.pw_gid, pw.pw_dir, pw.pw_name
    except KeyError:
        if not name.isdigit():
            raise P.GuestError("EINVAL", f"no user {name!r} in this image") from None
        uid, gid, home, login = int(name), int(name), "/", ""
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise P.GuestError("EINVAL", f"no group {group!r} in this image") from None
    groups = os.getgrouplist(login, gid) if login else [gid]
    return uid, gid, groups, home


def prepare(h: dict, base_env: dict[str, str], defaults: dict | None = None
            ) -> tuple[list[str], dict[str, str], str, dict]:
    """Validate a request's argv, env, user and cwd: (argv, env, cwd, Popen's ids)."""
    argv = h["argv"]
    if (not isinstance(argv, list) or not argv
            or not all(isinstance(a, str) and "\x00" not in a for a in argv)):
        raise P.GuestError("EINVAL", "argv must be non-empty strings without NUL")
    req_env = h.get("env") or {}
    if not all(isinstance(k, str) and isinstance(v, str) and "\x00" not in k + v
               for k, v in req_env.items()):
        raise P.GuestError("EINVAL", "env must map str to str")
    defaults = defaults or {}
    env = {**base_env, **req_env}
    user = h.get("user") or defaults.get("user")
    ids: dict = {}
    home = "/root"
    if user and user not in ("root", "0", "0:0"):
        uid, gid, groups, home = identity(str(user))
        ids = {"user": uid, "group": gid, "extra_groups": groups}
        if not req_env.get("HOME"):
            env["HOME"] = home
    cwd = h.get("cwd") or defaults.get("cwd") or home
    P.check_path(cwd)
    if not os.path.isdir(cwd):
        raise P.GuestError("ENOENT", f"cwd {cwd} is not a directory")
    return argv, env, cwd, ids


def spawn(rid: int, h: dict, base_env: dict[str, str], defaults: dict | None = None) -> Proc:
    """Validate an exec request and start its process (own session, pipes), as
    the request's user or the image's (`defaults`: cwd, user)."""
    argv, env, cwd, ids = prepare(h, base_env, defaults)
    timeout = float(h.get("timeout_s", 60))
    cap = int(h.get("output_cap", 1 << 20))
    if not (0 < timeout <= 86400) or not (0 <= cap <= 1 << 30):
        raise P.GuestError("EINVAL", "timeout_s or output_cap out of range")
    has_stdin = bool(h.get("stdin"))
    try:
        popen = subprocess.Popen(
            argv, stdin=subprocess.PIPE if has_stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=env,
            start_new_session=True, close_fds=True, **ids)
    except OSError as e:
        code = 126 if e.errno in (errno.EACCES, errno.ENOEXEC, errno.EISDIR) else 127
        raise SpawnFailed(code, f"{argv[0]}: {e.strerror}\n".encode()) from None
    return Proc(rid, popen, cap, timeout)

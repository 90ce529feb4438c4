"""The jail zygote: a small root process (stdlib only, single-threaded) that
forks each VM's QEMU into its jail and execs it.

    python -S -I zygote_main.py FD     (FD: a SOCK_SEQPACKET socket)

Each request is one message: a JSON spec (jail.spec.JailSpec) and the file
descriptors QEMU gets. The child: its own session, the VM's cgroup, a new
mount namespace whose root is a fresh tmpfs holding only the binds of the
spec, /dev with a few nodes, a pid-only /proc; then no groups, the VM's uid
and gid (no capabilities), no_new_privs, rlimits, and exec. The answer is
{"pid": N} once exec succeeded, or {"error": "..."}. A fork (not a new
interpreter) per VM keeps the jail's cost at a few milliseconds.
"""
from __future__ import annotations

import fcntl
import json
import os
import resource
import signal
import socket
import stat
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING or __package__:
    from . import linux as L
else:  # run as a script (python -S -I): the sibling module, no packages needed
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import linux as L

MAX_MSG = 1 << 20
MAX_FDS = 16
JAIL_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


def _touch(path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))


def _bind(root: str, path: str, rw: bool) -> None:
    target = root + path
    if os.path.isdir(path):
        os.makedirs(target, exist_ok=True)
    else:
        _touch(target)
    L.mount(path, target, None, L.MS_BIND | L.MS_REC)
    flags = L.MS_BIND | L.MS_REMOUNT | L.MS_NOSUID | L.MS_NODEV | (0 if rw else L.MS_RDONLY)
    L.mount(None, target, None, flags)


def _usr_links(root: str) -> None:
    """Debian's merged /usr: /bin, /lib... are links into /usr."""
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = "/" + name
        if os.path.islink(host):
            os.symlink(os.readlink(host), f"{root}/{name}")
        elif os.path.isdir(host):
            _bind(root, host, False)


def _devices(root: str, devices: list[list], gid: int) -> None:
    """A /dev of its own (the root tmpfs is nodev) with only the listed nodes."""
    os.makedirs(f"{root}/dev", mode=0o755)
    L.mount("tmpfs", f"{root}/dev", "tmpfs", L.MS_NOSUID | L.MS_NOEXEC, "size=64k,mode=0755")
    for name, major, minor, mode in devices:
        path = f"{root}/dev/{name}"
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(major, minor))
        os.chown(path, 0, gid)
        os.chmod(path, mode)


def _enter_jail(spec: dict) -> None:
    root = spec["mountpoint"]
    L.unshare(L.CLONE_NEWNS)
    L.mount(None, "/", None, L.MS_REC | L.MS_PRIVATE)
    L.mount("tmpfs", root, "tmpfs", L.MS_NOSUID | L.MS_NODEV, "size=4m,mode=0755")
    _bind(root, "/usr", False)
    _usr_links(root)
    for path, rw in spec["binds"]:
        _bind(root, path, bool(rw))
    _devices(root, spec["devices"], spec["gid"])
    os.makedirs(f"{root}/proc")
    L.mount("proc", f"{root}/proc", "proc", L.MS_RDONLY | L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC,
            "hidepid=invisible,subset=pid")
    os.makedirs(f"{root}/.old")
    os.chdir(root)
    L.pivot_root(".", ".old")
    os.chdir("/")
    L.umount2("/.old", L.MNT_DETACH)
    os.rmdir("/.old")
    L.mount(None, "/", None, L.MS_REMOUNT | L.MS_RDONLY | L.MS_NOSUID | L.MS_NODEV)


def _drop(spec: dict) -> None:
    uid, gid = spec["uid"], spec["gid"]
    if uid <= 0 or gid <= 0:
        raise ValueError("a jail never runs as root")
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    nofile = spec.get("nofile", 4096)
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    os.umask(0o077)
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    L.no_new_privs()


def _place_fds(received: list[int], targets: list[int], log_index: int | None,
               errw: int) -> None:
    """`received[i]` becomes fd `targets[i]` (targets < 100); the log becomes
    stdout and stderr; everything else is closed (the error pipe at exec)."""
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in received]
    null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    log = high[log_index] if log_index is not None else null
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    for fd, target in zip(high, targets, strict=True):
        os.dup2(fd, target)  # without close-on-exec: QEMU gets it
    keep = {0, 1, 2, errw, null, *targets, *high}
    for fd in range(3, 100 + len(high) + 64):
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def child(spec: dict, fds: list[int], errw: int) -> None:
    os.setsid()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for procs in spec["cgroup_procs"]:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))
    _enter_jail(spec)
    _drop(spec)
    _place_fds(fds, spec["fd_targets"], spec.get("log_index"), errw)
    os.execve(spec["exe"], spec["argv"], JAIL_ENV)


def _reap(*_: object) -> None:
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def serve(sock: socket.socket) -> None:
    signal.signal(signal.SIGCHLD, _reap)
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(sock, MAX_MSG, MAX_FDS)
        except InterruptedError:
            continue
        if not msg:
            return  # the agent went away: its VMs live on
        reply: dict[str, object]
        try:
            spec = json.loads(msg)
            reply = {"pid": _spawn(spec, fds)}
        except Exception as e:  # noqa: BLE001 - every request is answered
            reply = {"error": f"{e.__class__.__name__}: {e}"[:2000]}
        finally:
            for fd in fds:
                os.close(fd)
        sock.send(json.dumps(reply).encode())


def _spawn(spec: dict, fds: list[int]) -> int:
    errr, errw = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child execs or exits
        os.close(errr)
        try:
            child(spec, fds, errw)
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            os.write(errw, f"{e.__class__.__name__}: {e}".encode()[:2000])
        os._exit(127)
    os.close(errw)
    chunks = []
    while chunk := os.read(errr, 4096):
        chunks.append(chunk)
    os.close(errr)
    if chunks:
        raise RuntimeError(b"".join(chunks).decode(errors="replace"))
    return pid


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))

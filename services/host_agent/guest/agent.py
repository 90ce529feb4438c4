"""Corral guest agent: PID 1 inside the VM, serves the host over virtio-serial.

Stdlib only and asyncio-free (selectors) to keep start-up short under TCG.
Run as `python3 -S -E /opt/corral/guest/agent.py`.
"""
from __future__ import annotations

import array
import errno
import fcntl
import heapq
import itertools
import os
import selectors
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from typing import NamedTuple

if __package__:
    from . import protocol as P
else:  # inside the guest: protocol.py sits beside this file
    import protocol as P  # type: ignore[no-redef]

AGENT = "corral-guest/1"
OPS = ["hello", "ping", "configure", "exec", "cancel", "put", "get", "list"]
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
}
DRAIN_GRACE_S = 0.2
RECONNECT_POLL_S = 0.02


def log(msg: str) -> None:
    try:
        os.write(2, f"corral-agent: {msg}\n".encode())
    except OSError:
        pass


def find_port(name: str = P.PORT_NAME) -> str | None:
    base = "/sys/class/virtio-ports"
    try:
        ports = os.listdir(base)
    except FileNotFoundError:
        return None
    for p in ports:
        try:
            with open(f"{base}/{p}/name") as f:
                if f.read().strip() == name:
                    return f"/dev/{p}"
        except OSError:
            continue
    return None


RNDADDENTROPY = 0x40085203  # _IOW('R', 0x03, int[2])
RNDRESEEDCRNG = 0x5207      # _IO('R', 0x07)
MAC_RE_CHARS = set("0123456789abcdef:")


def add_entropy(data: bytes, credit: bool, fd: int | None = None) -> str:
    """Mix `data` into the kernel pool with credit and force a CRNG reseed.

    A plain write to /dev/urandom mixes without credit and does not reseed:
    two clones of one snapshot would keep producing the same bytes. The
    reseed bumps the CRNG generation, so every per-CPU CRNG rekeys.
    """
    data = bytes(data[:4096])
    own = fd is None
    if own:
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


# Network identity by ioctl: no process to start (an `ip` exec costs ~0.3 s
# under TCG). Numbers from <linux/sockios.h>, <linux/if.h>, <linux/route.h>.
SIOCADDRT = 0x890B
SIOCDELRT = 0x890C
SIOCGIFCONF = 0x8912
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCSIFADDR = 0x8916
SIOCSIFNETMASK = 0x891C
SIOCSIFHWADDR = 0x8924
IFF_UP = 0x1
ARPHRD_ETHER = 1
RTF_UP = 0x1
RTF_GATEWAY = 0x2
IFREQ_SIZE = 40  # struct ifreq: char[16] name + a 24-byte union
# struct rtentry (native layout): rt_pad1, rt_dst, rt_gateway, rt_genmask,
# rt_flags, rt_pad2, rt_pad3, rt_pad4, rt_metric, rt_dev, rt_mtu, rt_window,
# rt_irtt; the trailing "0L" pads to the struct's alignment.
RTENTRY = struct.Struct("@L16s16s16sHhLPhPLLH0L")
IFCONF = struct.Struct("@iP")  # struct ifconf: int ifc_len; char *ifc_buf


def _ifname(dev: str) -> bytes:
    name = dev.encode()
    if not name or len(name) > 15:
        raise P.GuestError("EINVAL", "bad dev")
    return name


def sockaddr_in(addr: str) -> bytes:
    """struct sockaddr_in (16 bytes): family (host order), port 0, address, zero pad."""
    return struct.pack("=HH4s8x", socket.AF_INET, 0, socket.inet_aton(addr))


def ifreq_flags(dev: str, flags: int) -> bytes:
    return struct.pack("16sh", _ifname(dev), flags).ljust(IFREQ_SIZE, b"\0")


def ifreq_addr(dev: str, addr: str) -> bytes:
    return (struct.pack("16s", _ifname(dev)) + sockaddr_in(addr)).ljust(IFREQ_SIZE, b"\0")


def ifreq_hwaddr(dev: str, mac: str) -> bytes:
    raw = bytes.fromhex(mac.replace(":", ""))
    if len(raw) != 6:
        raise P.GuestError("EINVAL", "bad mac")
    sa = struct.pack("=H14s", ARPHRD_ETHER, raw)
    return (struct.pack("16s", _ifname(dev)) + sa).ljust(IFREQ_SIZE, b"\0")


def rtentry_default(gateway: str) -> bytes:
    """A default route via `gateway`; rt_dev NULL: the kernel picks the device
    whose connected subnet holds the gateway."""
    any4 = sockaddr_in("0.0.0.0")
    return RTENTRY.pack(0, any4, sockaddr_in(gateway), any4, RTF_UP | RTF_GATEWAY,
                        0, 0, 0, 0, 0, 0, 0, 0)


def ifconf_names(raw: bytes, length: int) -> list[str]:
    """Interface labels (e.g. "eth0", "eth0:1") of the IPv4 addresses SIOCGIFCONF returned."""
    return [raw[o:o + 16].split(b"\0", 1)[0].decode(errors="replace")
            for o in range(0, length - IFREQ_SIZE + 1, IFREQ_SIZE)]


def ipv4_labels(fd: int) -> list[str]:
    buf = array.array("B", bytes(IFREQ_SIZE * 64))
    addr, _ = buf.buffer_info()
    n = IFCONF.unpack(fcntl.ioctl(fd, SIOCGIFCONF, IFCONF.pack(len(buf), addr)))[0]
    return ifconf_names(buf.tobytes(), n)


class IfAddr(NamedTuple):
    """What set_net needs of an IPv4 interface address (ipaddress.IPv4Interface
    has the same attributes, but costs ~8 ms of cold code after a restore)."""
    ip: str
    netmask: str
    with_prefixlen: str


def parse_ipv4(s: str) -> str:
    parts = str(s).split(".")
    if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 and int(p) <= 255
                                  for p in parts):
        raise P.GuestError("EINVAL", f"bad IPv4 address {s!r}")
    return ".".join(str(int(p)) for p in parts)


def parse_ifaddr(ip: str, prefix_len: int) -> IfAddr:
    ip, prefix_len = parse_ipv4(ip), int(prefix_len)
    if not 0 <= prefix_len <= 32:
        raise P.GuestError("EINVAL", f"bad prefix length {prefix_len}")
    mask = socket.inet_ntoa(((0xFFFFFFFF << (32 - prefix_len)) & 0xFFFFFFFF).to_bytes(4, "big"))
    return IfAddr(ip, mask, f"{ip}/{prefix_len}")


def set_net_ioctl(dev: str, mac: str, iface: IfAddr, gw: str | None,
                  sock: socket.socket | None = None) -> None:
    """MAC, address + netmask (replaces the primary IPv4 address), up, default route.

    The MAC changes while the link is up (virtio-net tells the device; the
    kernel flushes the device's ARP entries on the change): a down/up cycle
    costs ~50 ms of cold code under TCG after a restore. Only a driver that
    refuses a live change (EBUSY) gets the cycle. `sock`: an AF_INET socket to
    use (the agent keeps one open, so a restored clone skips socket())."""
    own = sock is None
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) if own else sock
    try:
        fd = s.fileno()
        # SIOCSIFADDR/SIOCSIFNETMASK act on the device's first address only:
        # with more than one (no flush by ioctl) leave it to `ip`.
        n_addrs = sum(1 for n in ipv4_labels(fd) if n == dev or n.startswith(dev + ":"))
        if n_addrs > 1:
            raise OSError(errno.ENOTSUP, f"{dev} has {n_addrs} IPv4 addresses")
        flags = struct.unpack_from("16sh", fcntl.ioctl(fd, SIOCGIFFLAGS, ifreq_flags(dev, 0)))[1]
        try:
            fcntl.ioctl(fd, SIOCSIFHWADDR, ifreq_hwaddr(dev, mac))
        except OSError as e:
            if e.errno != errno.EBUSY or not flags & IFF_UP:
                raise
            fcntl.ioctl(fd, SIOCSIFFLAGS, ifreq_flags(dev, flags & ~IFF_UP))
            fcntl.ioctl(fd, SIOCSIFHWADDR, ifreq_hwaddr(dev, mac))
            flags &= ~IFF_UP
        fcntl.ioctl(fd, SIOCSIFADDR, ifreq_addr(dev, str(iface.ip)))
        fcntl.ioctl(fd, SIOCSIFNETMASK, ifreq_addr(dev, str(iface.netmask)))
        if not flags & IFF_UP:
            fcntl.ioctl(fd, SIOCSIFFLAGS, ifreq_flags(dev, flags | IFF_UP))
        if gw is not None:
            rt = rtentry_default(str(gw))
            try:
                fcntl.ioctl(fd, SIOCADDRT, rt)
            except OSError as e:
                if e.errno != errno.EEXIST:
                    raise
                fcntl.ioctl(fd, SIOCDELRT, rt)
                fcntl.ioctl(fd, SIOCADDRT, rt)
    finally:
        if own:
            s.close()


def set_net_ip(dev: str, mac: str, iface: IfAddr, gw: str | None) -> None:
    cmds = [f"link set dev {dev} down", f"addr flush dev {dev}",
            f"link set dev {dev} address {mac}", f"link set dev {dev} up",
            f"addr add {iface.with_prefixlen} dev {dev}"]
    if gw is not None:
        cmds.append(f"route replace default via {gw} dev {dev}")
    r = subprocess.run(["ip", "-batch", "-"], input="\n".join(cmds) + "\n",
                       capture_output=True, text=True, timeout=20)
    if r.returncode != 0:
        raise P.GuestError("EIO", f"ip: {r.stderr.strip()[-300:]}")


def set_net(net: dict, sock: socket.socket | None = None) -> str:
    """Give eth0 a new identity: MAC, one IPv4 address/prefix, default route.

    Returns how: "ioctl", or "ip" when an ioctl failed and `ip -batch` did it."""
    dev = str(net.get("dev") or "eth0")
    mac = str(net["mac"]).lower()
    if len(mac) != 17 or not set(mac) <= MAC_RE_CHARS or not dev.isalnum() or len(dev) > 15:
        raise P.GuestError("EINVAL", "bad mac or dev")
    iface = parse_ifaddr(net["ip"], net["prefix_len"])
    gw = parse_ipv4(net["gateway"]) if net.get("gateway") else None
    try:
        set_net_ioctl(dev, mac, iface, gw, sock)
        return "ioctl"
    except OSError as e:
        log(f"net ioctl: {e}; falling back to ip -batch")
    set_net_ip(dev, mac, iface, gw)
    return "ip"


class Proc:
    def __init__(self, rid: int, popen: subprocess.Popen, cap: int) -> None:
        self.rid = rid
        self.popen = popen
        self.cap = cap
        self.sent = {"stdout": 0, "stderr": 0}
        self.truncated = False
        self.timed_out = False
        self.open_streams = 2
        self.status: int | None = None
        self.stdin_buf = b""
        self.started = time.monotonic()
        self.finished = False


class Agent:
    def __init__(self, port_path: str) -> None:
        self.fd = os.open(port_path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self.sel = selectors.DefaultSelector()
        self.dec = P.Decoder()
        self.out = bytearray()
        self.procs: dict[int, Proc] = {}  # by pid
        self.by_rid: dict[int, Proc] = {}
        self.timers: list[tuple[float, int, object]] = []
        self.seq = itertools.count()
        self.env = dict(BASE_ENV)
        self.connected = True
        self.writing = False
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.sig_r = rfd
        signal.set_wakeup_fd(wfd)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.sel.register(self.sig_r, selectors.EVENT_READ, self.on_signal)
        self.sel.register(self.fd, selectors.EVENT_READ, self.on_port)
        # Opened once: a restored clone's hand-off then runs no open() path.
        self.urandom = os.open("/dev/urandom", os.O_WRONLY | os.O_CLOEXEC)
        self.inet = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    # -- loop ---------------------------------------------------------------
    def call_later(self, delay: float, fn) -> None:
        heapq.heappush(self.timers, (time.monotonic() + delay, next(self.seq), fn))

    def run(self) -> None:
        while True:
            timeout = None
            if self.timers:
                timeout = max(0.0, self.timers[0][0] - time.monotonic())
            for key, mask in self.sel.select(timeout):
                key.data(key.fileobj, mask)
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                _, _, fn = heapq.heappop(self.timers)
                fn()

    # -- port I/O -----------------------------------------------------------
    def on_port(self, _fd, mask) -> None:
        if mask & selectors.EVENT_READ:
            self.read_port()
        if mask & selectors.EVENT_WRITE and self.connected:
            self.flush()

    def read_port(self) -> None:
        try:
            data = os.read(self.fd, 1 << 20)
        except BlockingIOError:
            return
        except OSError as e:
            log(f"port read: {e}")
            data = b""
        if not data:
            self.on_disconnect()
            return
        try:
            frames = self.dec.feed(data)
        except P.ProtocolError as e:
            log(f"protocol error, resetting: {e}")
            self.dec.reset()
            return
        for header, payload in frames:
            self.dispatch(header, payload)

    def on_disconnect(self) -> None:
        if self.connected:
            self.connected = False
            self.dec.reset()
            self.out.clear()
            for proc in list(self.by_rid.values()):
                self.kill(proc)
                proc.finished = True  # nobody to answer
        self.sel.unregister(self.fd)
        self.call_later(RECONNECT_POLL_S, self.poll_reconnect)

    def poll_reconnect(self) -> None:
        try:
            data = os.read(self.fd, 1 << 20)
        except BlockingIOError:
            data = None  # connected, nothing yet
        except OSError:
            data = b""
        if data == b"":
            self.call_later(RECONNECT_POLL_S, self.poll_reconnect)
            return
        self.connected = True
        self.writing = False
        self.sel.register(self.fd, selectors.EVENT_READ, self.on_port)
        if data:
            try:
                frames = self.dec.feed(data)
            except P.ProtocolError:
                self.dec.reset()
                return
            for header, payload in frames:
                self.dispatch(header, payload)

    def send(self, header: dict, payload: bytes = b"") -> None:
        if not self.connected:
            return
        self.out += P.encode(header, payload)
        self.flush()

    def flush(self) -> None:
        while self.out:
            try:
                n = os.write(self.fd, self.out[:1 << 20])
            except BlockingIOError:
                break
            except OSError as e:
                log(f"port write: {e}")
                self.out.clear()
                break
            del self.out[:n]
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.out else 0)
        if self.connected:
            self.sel.modify(self.fd, want, self.on_port)

    # -- dispatch -----------------------------------------------------------
    def dispatch(self, h: dict, payload: bytes) -> None:
        rid = h.get("id")
        op = h.get("op")
        if not isinstance(rid, int):
            log("request without id dropped")
            return
        fn = getattr(self, f"op_{op}", None) if op in OPS else None
        if fn is None:
            self.send({"id": rid, "type": "error", "code": "EBADOP", "message": f"unknown op {op!r}"})
            return
        try:
            fn(rid, h, payload)
        except P.GuestError as e:
            self.send({"id": rid, "type": "error", "code": e.code, "message": e.message})
        except OSError as e:
            self.send({"id": rid, "type": "error", "code": P.errno_code(e), "message": str(e)})
        except (TypeError, ValueError, KeyError) as e:
            self.send({"id": rid, "type": "error", "code": "EINVAL", "message": str(e)})

    def op_hello(self, rid, h, _p) -> None:
        uptime = time.clock_gettime(time.CLOCK_BOOTTIME)  # = /proc/uptime, via the vDSO
        self.send({"id": rid, "type": "hello", "v": P.VERSION, "agent": AGENT, "ops": OPS,
                   "uptime_ms": int(uptime * 1000), "pid": os.getpid()})

    def op_ping(self, rid, _h, _p) -> None:
        self.send({"id": rid, "type": "ok"})

    def op_configure(self, rid, h, payload) -> None:
        t0 = time.monotonic()
        ms = {}

        def mark(step: str) -> None:
            nonlocal t0
            t = time.monotonic()
            ms[step] = round((t - t0) * 1000, 1)
            t0 = t
        env = h.get("env")
        if env is not None:
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
                raise P.GuestError("EINVAL", "env must map str to str")
            self.env = {**BASE_ENV, **env}
        if h.get("hostname"):
            name = str(h["hostname"])
            socket.sethostname(name)
            fd = os.open("/etc/hostname", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                         0o644)
            try:
                os.write(fd, (name + "\n").encode())
            finally:
                os.close(fd)
            mark("hostname")
        applied = []
        if payload:  # fresh entropy, e.g. after a snapshot restore
            applied.append("entropy:" + add_entropy(payload, bool(h.get("credit", True)),
                                                    self.urandom))
            mark("entropy")
        if h.get("time_ns") is not None:  # wall clock: a restored clone lives in the past
            time.clock_settime_ns(time.CLOCK_REALTIME, int(h["time_ns"]))
            applied.append("time")
            mark("time")
        if h.get("net") is not None:
            how = set_net(h["net"], self.inet)
            applied.append("net" if how == "ioctl" else f"net:{how}")
            mark("net")
        self.send({"id": rid, "type": "ok", "applied": applied, "ms": ms})

    # -- exec ---------------------------------------------------------------
    def op_exec(self, rid, h, payload) -> None:
        argv = h["argv"]
        if not argv or not all(isinstance(a, str) and "\x00" not in a for a in argv):
            raise P.GuestError("EINVAL", "argv must be non-empty strings without NUL")
        env = {**self.env, **(h.get("env") or {})}
        cwd = h.get("cwd") or "/root"
        P.check_path(cwd)
        if not os.path.isdir(cwd):
            raise P.GuestError("ENOENT", f"cwd {cwd} is not a directory")
        timeout = float(h.get("timeout_s", 60))
        cap = int(h.get("output_cap", 1 << 20))
        if not (0 < timeout <= 86400) or not (0 <= cap <= 1 << 30):
            raise P.GuestError("EINVAL", "timeout_s or output_cap out of range")
        has_stdin = bool(h.get("stdin"))
        try:
            popen = subprocess.Popen(
                argv, stdin=subprocess.PIPE if has_stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=env,
                start_new_session=True, close_fds=True)
        except OSError as e:
            code = 126 if e.errno in (errno.EACCES, errno.ENOEXEC, errno.EISDIR) else 127
            msg = f"{argv[0]}: {e.strerror}\n".encode()
            self.send({"id": rid, "type": "out", "stream": "stderr"}, msg)
            self.send({"id": rid, "type": "exit", "code": code, "timed_out": False,
                       "truncated": False, "duration_ms": 0})
            return
        proc = Proc(rid, popen, cap)
        self.procs[popen.pid] = proc
        self.by_rid[rid] = proc
        for name, pipe in (("stdout", popen.stdout), ("stderr", popen.stderr)):
            os.set_blocking(pipe.fileno(), False)
            self.sel.register(pipe.fileno(), selectors.EVENT_READ,
                              lambda fd, m, p=proc, s=name: self.on_output(p, s, fd))
        if has_stdin:
            proc.stdin_buf = payload
            os.set_blocking(popen.stdin.fileno(), False)
            self.sel.register(popen.stdin.fileno(), selectors.EVENT_WRITE,
                              lambda fd, m, p=proc: self.on_stdin(p))

        def on_timeout(p=proc) -> None:
            if p.status is None and not p.finished:
                p.timed_out = True
                self.kill(p)
        self.call_later(timeout, on_timeout)

    def on_stdin(self, proc: Proc) -> None:
        pipe = proc.popen.stdin
        try:
            n = os.write(pipe.fileno(), proc.stdin_buf[:1 << 16])
            proc.stdin_buf = proc.stdin_buf[n:]
            if proc.stdin_buf:
                return
        except BlockingIOError:
            return
        except OSError:
            pass  # EPIPE: the process does not read stdin
        self.sel.unregister(pipe.fileno())
        pipe.close()

    def on_output(self, proc: Proc, stream: str, fd: int) -> None:
        try:
            data = os.read(fd, P.CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.sel.unregister(fd)
            getattr(proc.popen, stream).close()
            proc.open_streams -= 1
            self.maybe_finish(proc)
            return
        room = proc.cap - proc.sent[stream]
        if len(data) > room:
            proc.truncated = True
            data = data[:max(room, 0)]
        if data and not proc.finished:
            proc.sent[stream] += len(data)
            self.send({"id": proc.rid, "type": "out", "stream": stream}, data)

    def on_signal(self, fd, _mask) -> None:
        try:
            while os.read(fd, 4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            proc = self.procs.pop(pid, None)
            if proc is None:
                continue  # a reparented orphan
            proc.status = os.waitstatus_to_exitcode(status)
            proc.popen.returncode = proc.status
            if proc.open_streams:
                self.call_later(DRAIN_GRACE_S, lambda p=proc: self.force_finish(p))
            self.maybe_finish(proc)

    def force_finish(self, proc: Proc) -> None:
        for stream in ("stdout", "stderr"):
            pipe = getattr(proc.popen, stream)
            if not pipe.closed:
                self.sel.unregister(pipe.fileno())
                pipe.close()
                proc.open_streams -= 1
        self.maybe_finish(proc)

    def maybe_finish(self, proc: Proc) -> None:
        if proc.status is None or proc.open_streams:
            return
        stdin = proc.popen.stdin
        if stdin is not None and not stdin.closed:
            self.sel.unregister(stdin.fileno())
            stdin.close()
        self.by_rid.pop(proc.rid, None)
        if proc.finished:
            return
        proc.finished = True
        self.send({"id": proc.rid, "type": "exit", "code": proc.status,
                   "timed_out": proc.timed_out, "truncated": proc.truncated,
                   "duration_ms": int((time.monotonic() - proc.started) * 1000)})

    def kill(self, proc: Proc) -> None:
        try:
            os.killpg(proc.popen.pid, signal.SIGKILL)
        except OSError:
            pass

    def op_cancel(self, rid, h, _p) -> None:
        proc = self.by_rid.get(h.get("target"))
        if proc is not None:
            self.kill(proc)
        self.send({"id": rid, "type": "ok", "found": proc is not None})

    # -- files --------------------------------------------------------------
    def op_put(self, rid, h, payload) -> None:
        path = P.check_path(h.get("path"))
        mode = int(h.get("mode", 0o644)) & 0o7777
        if len(payload) > P.MAX_FILE:
            raise P.GuestError("EFBIG", "file too large")
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/.corral-put-{rid}-{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            view = memoryview(payload)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        try:
            os.rename(tmp, path)
        except OSError:
            os.unlink(tmp)
            raise
        self.send({"id": rid, "type": "ok", "size": len(payload)})

    def op_get(self, rid, h, _p) -> None:
        path = P.check_path(h.get("path"))
        limit = min(int(h.get("max_bytes", P.MAX_FILE)), P.MAX_FILE)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise P.GuestError("EISDIR", path)
            if not stat.S_ISREG(st.st_mode):
                raise P.GuestError("EINVAL", "not a regular file")
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
        self.send({"id": rid, "type": "data", "size": len(data)}, data)

    def op_list(self, rid, h, _p) -> None:
        path = P.check_path(h.get("path"))
        entries = []
        truncated = False
        with os.scandir(path) as it:
            for e in it:
                if len(entries) >= P.MAX_LIST:
                    truncated = True
                    break
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                entries.append({"name": e.name, "size": st.st_size,
                                "is_dir": stat.S_ISDIR(st.st_mode), "mode": st.st_mode})
        entries.sort(key=lambda x: x["name"])
        self.send({"id": rid, "type": "entries", "entries": entries, "truncated": truncated})


def main() -> None:
    deadline = time.monotonic() + 30
    port = find_port()
    while port is None and time.monotonic() < deadline:
        time.sleep(0.02)  # the port appears once virtio_console probed it
        port = find_port()
    if port is None:
        log("virtio port corral.agent not found")
        sys.exit(1)
    log(f"ready on {port}")
    Agent(port).run()


if __name__ == "__main__":
    main()

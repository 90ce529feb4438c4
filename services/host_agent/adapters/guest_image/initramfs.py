"""Write a tiny uncompressed newc initramfs: busybox-static, virtio modules, /init."""
from __future__ import annotations

import stat
import struct
from pathlib import Path

from .init_script import INIT_SH

BUSYBOX = Path("/bin/busybox")
APPLETS = ["sh", "mount", "insmod", "usleep", "cat", "echo", "mkdir", "ip",
           "hostname", "switch_root"]


def is_static_elf(path: Path) -> bool:
    """True if the x86-64 ELF has no PT_INTERP (no dynamic loader needed)."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return False
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return all(struct.unpack_from("<I", data, phoff + i * phentsize)[0] != 3
               for i in range(phnum))


def _entry(ino: int, name: str, mode: int, data: bytes = b"") -> bytes:
    nm = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nm), 0]
    hdr = b"070701" + b"".join(b"%08X" % v for v in fields)
    out = hdr + nm
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)
    return out


def module_name(path: Path) -> str:
    return path.name.removesuffix(".ko")


def init_script(modules: list[Path]) -> bytes:
    return INIT_SH.replace("__MODULES__", " ".join(module_name(m) for m in modules)).encode()


def build_initramfs(out: Path, modules: list[Path], busybox: Path = BUSYBOX) -> None:
    if not is_static_elf(busybox):
        raise RuntimeError(f"{busybox} is not static: apt-get install -y busybox-static")
    entries: list[tuple[str, int, bytes]] = []
    for d in ["bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"]:
        entries.append((d, stat.S_IFDIR | 0o755, b""))
    entries.append(("dev/console", stat.S_IFCHR | 0o600, b""))
    entries.append(("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes()))
    for a in APPLETS:
        entries.append((f"bin/{a}", stat.S_IFLNK | 0o777, b"busybox"))
    for m in modules:
        entries.append((f"lib/modules/{m.name}", stat.S_IFREG | 0o644, m.read_bytes()))
    entries.append(("init", stat.S_IFREG | 0o755, init_script(modules)))
    with out.open("wb") as f:
        for ino, (name, mode, data) in enumerate(entries, start=1):
            if name == "dev/console":
                f.write(_console_entry(ino))
                continue
            f.write(_entry(ino, name, mode, data))
        f.write(_entry(0, "TRAILER!!!", 0))


def _console_entry(ino: int) -> bytes:
    # char device 5:1; rdevmajor/rdevminor are fields 10 and 11 of newc.
    nm = b"dev/console\0"
    fields = [ino, stat.S_IFCHR | 0o600, 0, 0, 1, 0, 0, 0, 0, 5, 1, len(nm), 0]
    out = b"070701" + b"".join(b"%08X" % v for v in fields) + nm
    return out + b"\0" * (-len(out) % 4)

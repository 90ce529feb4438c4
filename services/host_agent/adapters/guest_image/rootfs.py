"""Build the Debian bookworm root filesystem (mmdebstrap) as an ext4 file."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ["python3", "iproute2", "ca-certificates", "procps"]
# Trimmed after install: docs, locales, apt lists and caches.
PRUNE = ["usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
         "var/lib/apt/lists", "var/cache/apt", "var/cache/debconf/templates.dat-old"]
GUEST_SRC = Path(__file__).resolve().parents[4] / "guest"  # the top-level `guest` package
GUEST_FILES = ["agent.py", "protocol.py", "console.py", "entropy.py", "netconf.py",
               "files.py", "process.py", "execs.py"]
AGENT_DIR = "opt/corral/guest"


def guest_sources() -> dict[str, bytes]:
    return {f: (GUEST_SRC / f).read_bytes() for f in GUEST_FILES}


def debootstrap(root: Path, suite: str = SUITE, packages: list[str] = PACKAGES,
                mirror: str = MIRROR) -> None:
    cmd = ["mmdebstrap", "--variant=minbase", "--mode=root", "--quiet",
           f"--include={','.join(packages)}",
           "--dpkgopt=path-exclude=/usr/share/{doc,man,info,locale}/*",
           "--dpkgopt=path-include=/usr/share/locale/locale.alias",
           suite, str(root), mirror]
    subprocess.run(cmd, check=True)


def customise(root: Path) -> None:
    for p in PRUNE:
        t = root / p
        if t.is_dir():
            shutil.rmtree(t)
            t.mkdir()
    agent = root / AGENT_DIR
    agent.mkdir(parents=True, exist_ok=True)
    for name, data in guest_sources().items():
        (agent / name).write_bytes(data)
    # The kernel's hostname, never a stale copy: a clone's is set by sethostname
    # alone (a file write on a just-restored guest costs ~60 ms under TCG).
    (root / "etc/hostname").unlink(missing_ok=True)
    (root / "etc/hostname").symlink_to("/proc/sys/kernel/hostname")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 corral\n::1 localhost\n")
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    (root / "etc/resolv.conf").write_text("nameserver 1.1.1.1\n")
    (root / "root").mkdir(exist_ok=True)
    (root / "etc/fstab").write_text("/dev/vda / ext4 rw,noatime 0 1\n")
    # Precompile the agent so the guest never writes .pyc on boot.
    subprocess.run(["chroot", str(root), "/usr/bin/python3", "-m", "compileall", "-q",
                    f"/{AGENT_DIR}"], check=True)


def make_ext4(root: Path, out: Path, headroom_mib: int = 1024) -> None:
    used = int(subprocess.run(["du", "-sxm", str(root)], capture_output=True, text=True,
                              check=True).stdout.split()[0])
    size_mib = int(used * 1.25) + headroom_mib
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "corral-root", "-m", "0",
                    "-E", "lazy_itable_init=0,lazy_journal_init=0",
                    "-d", str(root), str(out), f"{size_mib}M"], check=True,
                   stdout=subprocess.DEVNULL)


def build_rootfs(out: Path, work: Path) -> None:
    root = work / "root"
    debootstrap(root)
    customise(root)
    make_ext4(root, out)

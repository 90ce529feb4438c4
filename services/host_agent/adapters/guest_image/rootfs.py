"""Build the Debian bookworm root filesystem (mmdebstrap) as an ext4 file."""
from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ["python3", "iproute2", "ca-certificates", "procps"]
# Trimmed after install: docs, locales, apt lists and caches.
PRUNE = ["usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
         "var/lib/apt/lists", "var/cache/apt", "var/cache/debconf/templates.dat-old"]
GUEST_SRC = Path(__file__).resolve().parents[4] / "guest"  # the top-level `guest` package
GUEST_FILES = ["agent.py", "protocol.py", "console.py", "entropy.py", "netconf.py",
               "files.py", "process.py", "execs.py", "background.py", "watch.py"]
AGENT_DIR = "opt/corral/guest"
RUNTIME_DIR = "opt/corral/runtime"  # the agent's own Python, for images that lack one
PYTHON = "usr/bin/python3.11"
STDLIB_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3",
               "pydoc_data", "unittest", "distutils", "config-3.11-x86_64-linux-gnu"}


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
    # An unprivileged `user` with /home/user, as E2B's templates have (exec user=)
    subprocess.run(["chroot", str(root), "useradd", "--create-home", "--uid", "1000",
                    "--user-group", "--shell", "/bin/bash", "user"], check=True)
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


def write_runtime(root: Path, out: Path) -> None:
    """A tar of the agent (opt/corral/guest) and the image's Python with the
    libraries it links and its standard library (opt/corral/runtime), run
    through its own loader: injected into imported images."""
    ldd = subprocess.run(["chroot", str(root), "ldd", f"/{PYTHON}"], capture_output=True,
                         text=True, check=True).stdout
    libs = sorted(set(re.findall(r"(/\S+\.so[.\d]*)", ldd)))
    with tarfile.open(out, "w") as tf:
        tf.add(root / AGENT_DIR, AGENT_DIR)
        tf.add(root / PYTHON, f"{RUNTIME_DIR}/bin/python3.11")
        for lib in libs:  # links resolved inside the image's root, never the host's
            real = subprocess.run(["chroot", str(root), "readlink", "-f", lib],
                                  capture_output=True, text=True, check=True).stdout.strip()
            tf.add(root / real.lstrip("/"), f"{RUNTIME_DIR}/lib/{Path(lib).name}")
        for p in sorted((root / "usr/lib/python3.11").iterdir()):
            if p.name not in STDLIB_SKIP:
                tf.add(p, f"{RUNTIME_DIR}/lib/python3.11/{p.name}")


def build_rootfs(out: Path, work: Path, runtime: Path | None = None) -> None:
    root = work / "root"
    debootstrap(root)
    customise(root)
    if runtime is not None:
        write_runtime(root, runtime)
    make_ext4(root, out)

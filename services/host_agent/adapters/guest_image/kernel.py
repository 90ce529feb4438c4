"""Fetch the Debian cloud kernel package and extract an uncompressed vmlinux."""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

META_PACKAGE = "linux-image-cloud-amd64"
LZ4_MAGIC = b"\x02\x21\x4c\x18"
ELF_MAGIC = b"\x7fELF"
# Load order matters: dependencies first.
MODULES = [
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_mmio.ko",
    "kernel/net/core/failover.ko",
    "kernel/drivers/net/net_failover.ko",
    "kernel/drivers/net/virtio_net.ko",
    "kernel/drivers/block/virtio_blk.ko",
    "kernel/drivers/char/virtio_console.ko",
    "kernel/drivers/char/hw_random/virtio-rng.ko",
]


class ImageBuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class KernelFiles:
    package: str
    vmlinux: Path
    modules: list[Path]


def resolve_kernel_package() -> str:
    """The concrete `linux-image-<ver>-cloud-amd64` the meta package depends on."""
    out = subprocess.run(["apt-cache", "depends", META_PACKAGE],
                         capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends:") and "linux-image-" in line:
            return line.split(":", 1)[1].strip()
    raise ImageBuildError(f"cannot resolve {META_PACKAGE}; run `apt-get update` first")


def extract_vmlinux(vmlinuz: Path, out: Path) -> None:
    data = vmlinuz.read_bytes()
    i = data.find(LZ4_MAGIC)
    if i < 0:
        raise ImageBuildError(f"no LZ4 payload in {vmlinuz}")
    # lz4 exits non-zero on the trailing bytes after the payload; check the ELF instead.
    with out.open("wb") as f:
        subprocess.run(["lz4", "-dc"], input=data[i:], stdout=f, stderr=subprocess.DEVNULL)
    with out.open("rb") as f:
        if f.read(4) != ELF_MAGIC:
            raise ImageBuildError("decompressed kernel is not an ELF vmlinux")


def fetch_kernel(package: str, work: Path) -> KernelFiles:
    dl = work / "deb"
    dl.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", package],
                   cwd=dl, check=True,
                   stdout=subprocess.DEVNULL)
    debs = list(dl.glob(f"{package}_*.deb"))
    if len(debs) != 1:
        raise ImageBuildError(f"apt-get download {package} produced {debs}")
    root = work / "kroot"
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(root)], check=True)
    vmlinuz = next((root / "boot").glob("vmlinuz-*"))
    vmlinux = work / "vmlinux"
    extract_vmlinux(vmlinuz, vmlinux)
    moddir = next((root / "lib" / "modules").iterdir())
    mods = [moddir / m for m in MODULES]
    missing = [str(m) for m in mods if not m.exists()]
    if missing:
        raise ImageBuildError(f"kernel package lacks modules: {missing}")
    shutil.rmtree(dl)
    return KernelFiles(package, vmlinux, mods)

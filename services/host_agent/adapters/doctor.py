"""Host readiness checks for running microVMs, each with a fix hint.

Run: python -m services.host_agent.adapters.doctor [--json] [--no-probe]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

from services.host_agent.adapters.guest_image import ImagePaths

APT_HINT = "apt-get install -y {}"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok" | "warn" | "fail"
    detail: str
    hint: str = ""


def _cmd(*argv: str) -> tuple[bool, str]:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        return False, str(e)
    return p.returncode == 0, (p.stdout + p.stderr).strip()


def check_qemu() -> Check:
    if not shutil.which("qemu-system-x86_64"):
        return Check("qemu", "fail", "qemu-system-x86_64 not found",
                     APT_HINT.format("qemu-system-x86 qemu-utils"))
    ok, out = _cmd("qemu-system-x86_64", "--version")
    m = re.search(r"version (\d+)\.(\d+)", out)
    if not ok or not m:
        return Check("qemu", "fail", out[:200], APT_HINT.format("qemu-system-x86"))
    if (int(m.group(1)), int(m.group(2))) < (7, 2):
        return Check("qemu", "warn", out.splitlines()[0], "QEMU >= 7.2 is what Corral is tested on")
    if not shutil.which("qemu-img"):
        return Check("qemu", "fail", "qemu-img not found", APT_HINT.format("qemu-utils"))
    return Check("qemu", "ok", out.splitlines()[0])


def check_kvm_device() -> Check:
    if not os.path.exists("/dev/kvm"):
        return Check("kvm_device", "warn", "/dev/kvm absent: VMs will use TCG (17-35x slower)",
                     "enable virtualisation (VT-x/AMD-V or nested) and load kvm_intel/kvm_amd")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return Check("kvm_device", "warn", "/dev/kvm not accessible",
                     "run as root or add the user to the 'kvm' group")
    return Check("kvm_device", "ok", "/dev/kvm present")


def check_kvm_boot(probe: bool) -> Check:
    from services.host_agent.adapters.guest_image import find_image
    from services.host_agent.adapters.qemu.accel import probe_kvm
    if not probe:
        return Check("kvm_boot", "warn", "probe skipped (--no-probe)")
    if not os.path.exists("/dev/kvm"):
        return Check("kvm_boot", "warn", "no /dev/kvm: TCG fallback")
    img = _find(find_image)
    if img is None:
        return Check("kvm_boot", "warn", "no guest image to probe with",
                     "python -m services.host_agent.adapters.guest_image build")
    ok, why = asyncio.run(probe_kvm(img.kernel, img.initrd))
    if ok:
        return Check("kvm_boot", "ok", f"KVM probe boot succeeded: {why}")
    return Check("kvm_boot", "warn", f"KVM does not boot the guest, TCG fallback: {why[:300]}",
                 "a nested/paravirtual /dev/kvm (e.g. kvm_pvm) needs a special guest kernel;"
                 " run on hardware with VT-x/AMD-V for KVM speed")


def check_vsock() -> Check:
    if os.path.exists("/dev/vhost-vsock"):
        return Check("vhost_vsock", "ok", "/dev/vhost-vsock present (not required)")
    return Check("vhost_vsock", "ok", "absent; not required (agent uses virtio-serial)")


def check_tun() -> Check:
    if os.path.exists("/dev/net/tun"):
        return Check("tun", "ok", "/dev/net/tun present")
    return Check("tun", "warn", "/dev/net/tun missing: sandboxes get no network",
                 "modprobe tun, or run the container with --device /dev/net/tun")


def check_tsc() -> Check:
    from services.host_agent.adapters.qemu.cmdline import host_tsc_khz
    khz = host_tsc_khz()
    if khz:
        return Check("tsc", "ok", f"host TSC {khz} kHz (passed as tsc_early_khz under TCG)")
    return Check("tsc", "warn", "host TSC frequency unknown: TCG boots may hang in calibration",
                 "make dmesg or /proc/cpuinfo readable")


def check_image_tools() -> Check:
    need = {"mmdebstrap": "mmdebstrap", "busybox": "busybox-static", "lz4": "lz4",
            "mkfs.ext4": "e2fsprogs", "dpkg-deb": "dpkg", "apt-get": "apt"}
    missing = sorted({pkg for tool, pkg in need.items() if not shutil.which(tool)})
    from pathlib import Path

    from services.host_agent.adapters.guest_image.initramfs import BUSYBOX, is_static_elf
    if not is_static_elf(Path(BUSYBOX)):
        missing = sorted(set(missing) | {"busybox-static"})
    if missing:
        return Check("image_tools", "fail", f"missing: {', '.join(missing)}",
                     APT_HINT.format(" ".join(missing)))
    return Check("image_tools", "ok", "mmdebstrap, busybox-static, lz4, e2fsprogs present")


def check_image() -> Check:
    from services.host_agent.adapters.guest_image import find_image, manifest
    img = _find(find_image)
    if img is None:
        return Check("image", "warn", "default guest image not built yet (first start builds it)",
                     "python -m services.host_agent.adapters.guest_image build")
    m = manifest(img)
    return Check("image", "ok", f"{img.rootfs.parent} kernel={m['kernel_package']}")


def _find(find_image: Callable[[str], ImagePaths | None]) -> ImagePaths | None:
    try:
        return find_image("default")
    except Exception:  # noqa: BLE001 - apt lists missing etc.: the kernel check says so
        return None


def check_kernel_package() -> Check:
    from services.host_agent.adapters.guest_image.kernel import resolve_kernel_package
    try:
        return Check("kernel", "ok", resolve_kernel_package())
    except Exception as e:  # noqa: BLE001 - any failure is what the check reports
        return Check("kernel", "fail", str(e), "apt-get update")


def check_bridge() -> Check:
    if not shutil.which("ip"):
        return Check("bridge", "fail", "iproute2 missing", APT_HINT.format("iproute2"))
    if os.geteuid() != 0:
        return Check("bridge", "warn", "not root: cannot create bridges/TAPs",
                     "run the host agent as root or with CAP_NET_ADMIN")
    return Check("bridge", "ok", "iproute2 present, running as root")


def check_nft() -> Check:
    if not shutil.which("nft"):
        return Check("nft", "fail", "nft not found", APT_HINT.format("nftables"))
    ok, out = _cmd("nft", "--version")
    return Check("nft", "ok" if ok else "fail", out[:200],
                 "" if ok else APT_HINT.format("nftables"))


def run_checks(probe: bool = True) -> list[Check]:
    return [check_qemu(), check_kvm_device(), check_kvm_boot(probe), check_vsock(), check_tun(),
            check_tsc(), check_image_tools(), check_kernel_package(), check_image(),
            check_bridge(), check_nft()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m services.host_agent.adapters.doctor")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-probe", action="store_true", help="skip the KVM probe boot")
    a = ap.parse_args(argv)
    checks = run_checks(probe=not a.no_probe)
    if a.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        for c in checks:
            print(f"[{c.status:4}] {c.name:12} {c.detail}")
            if c.hint and c.status != "ok":
                print(f"{'':19}fix: {c.hint}")
    return 1 if any(c.status == "fail" for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())

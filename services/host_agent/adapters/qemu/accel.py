"""Pick the accelerator: KVM only if a short probe boot really works, else TCG."""
from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

from .cmdline import KERNEL_ARGS, QEMU

log = logging.getLogger("corral.host_agent.qemu")
PROBE_MARKER = b"corral-init: start"
_cache: dict[str, str] = {}


async def probe_kvm(kernel: Path, initrd: Path, timeout: float = 15.0) -> tuple[bool, str]:
    """Boot kernel+initrd under KVM until the initramfs prints its marker."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm missing or not accessible"
    argv = [QEMU, "-name", "corral-kvm-probe",
            "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=on",
            "-accel", "kvm", "-cpu", "host", "-nodefaults", "-no-user-config",
            "-nographic", "-no-reboot", "-m", "128", "-smp", "1",
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", " ".join(KERNEL_ARGS), "-serial", "stdio"]
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    seen = b""
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(timeout):
            while True:
                chunk = await proc.stdout.read(4096)
                if not chunk:
                    return False, f"qemu exited: {seen[-300:].decode(errors='replace')}"
                seen = (seen + chunk)[-8192:]
                if PROBE_MARKER in seen:
                    return True, f"booted in {time.monotonic() - t0:.1f}s"
    except TimeoutError:
        return False, f"no init marker within {timeout:.0f}s"
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def choose_accel(kernel: Path, initrd: Path, timeout: float | None = None) -> str:
    """Cached per process; CORRAL_ACCEL=kvm|tcg skips the probe."""
    forced = os.environ.get("CORRAL_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced
    if "accel" in _cache:
        return _cache["accel"]
    t = timeout or float(os.environ.get("CORRAL_KVM_PROBE_TIMEOUT", "15"))
    ok, why = await probe_kvm(kernel, initrd, t)
    if ok:
        _cache["accel"] = "kvm"
        log.info("KVM probe boot succeeded", extra={"detail": why})
    else:
        _cache["accel"] = "tcg"
        log.warning("KVM UNAVAILABLE: falling back to TCG software emulation; VMs boot and "
                    "run 17-35x slower", extra={"detail": why})
    return _cache["accel"]

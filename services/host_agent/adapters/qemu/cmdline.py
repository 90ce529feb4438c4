"""QEMU microvm command line and guest kernel arguments."""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

QEMU = "qemu-system-x86_64"
KERNEL_ARGS = ["console=ttyS0", "quiet", "reboot=t", "panic=-1", "mitigations=off",
               "i8042.noaux", "i8042.nomux", "i8042.nopnp", "i8042.dumbkbd"]


@lru_cache(maxsize=1)
def host_tsc_khz() -> int | None:
    """Host TSC frequency in kHz, from the kernel log, else /proc/cpuinfo."""
    try:
        dmesg = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        dmesg = ""
    for pat in (r"Refined TSC clocksource calibration: ([\d.]+) MHz",
                r"tsc: Detected ([\d.]+) MHz"):
        m = re.findall(pat, dmesg)
        if m:
            return int(float(m[-1]) * 1000)
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    mhz = re.search(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M)
    return int(float(mhz.group(1)) * 1000) if mhz else None


@dataclass(frozen=True)
class VmLayout:
    """Every path QEMU touches for one VM: all live under `dir`."""
    dir: Path

    @property
    def overlay(self) -> Path: return self.dir / "overlay.qcow2"
    @property
    def qmp(self) -> Path: return self.dir / "qmp.sock"
    @property
    def agent(self) -> Path: return self.dir / "agent.sock"
    @property
    def console(self) -> Path: return self.dir / "console.log"
    @property
    def qemu_log(self) -> Path: return self.dir / "qemu.log"


def kernel_cmdline(accel: str, ip: str | None = None, gateway: str | None = None,
                   prefix_len: int | None = None, hostname: str | None = None) -> str:
    args = list(KERNEL_ARGS)
    if accel == "tcg":
        khz = host_tsc_khz()
        if khz:
            args.append(f"tsc_early_khz={khz}")
    if ip:
        args.append(f"corral.ip={ip}/{prefix_len or 24}")
        if gateway:
            args.append(f"corral.gw={gateway}")
    if hostname:
        args.append(f"corral.hostname={hostname}")
    return " ".join(args)


def accel_args(accel: str, vcpus: int) -> list[str]:
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", "tcg,thread=multi", "-cpu", "max"]


@dataclass(frozen=True)
class MemFile:
    """Guest RAM backed by a file: `share` (MAP_SHARED) for a template being
    built, private (copy-on-write) for a clone mapping the template's RAM."""
    path: Path
    share: bool


MEM_ID = "mem"  # the RAM block id: identical in every VM, so states load anywhere


def memory_args(memory_mib: int, mem: MemFile | None) -> list[str]:
    if mem is None:
        obj = f"memory-backend-ram,id={MEM_ID},size={memory_mib}M"
    else:
        obj = (f"memory-backend-file,id={MEM_ID},size={memory_mib}M,"
               f"mem-path={mem.path},share={'on' if mem.share else 'off'}")
    return ["-m", str(memory_mib), "-object", obj]


def qemu_argv(*, sandbox_id: str, layout: VmLayout, kernel: Path, initrd: Path,
              accel: str, vcpus: int, memory_mib: int, append: str,
              tap: str | None = None, mac: str | None = None,
              mem: MemFile | None = None) -> list[str]:
    argv = [
        QEMU, "-name", f"corral-{sandbox_id}",
        "-M", f"microvm,x-option-roms=off,isa-serial=on,rtc=on,memory-backend={MEM_ID}",
        *accel_args(accel, vcpus),
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-smp", str(vcpus), *memory_args(memory_mib, mem),
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", append,
        "-serial", f"file:{layout.console}",
        "-qmp", f"unix:{layout.qmp},server=on,wait=off",
        "-drive", f"id=root,file={layout.overlay},format=qcow2,if=none,discard=unmap",
        "-device", "virtio-blk-device,drive=root",
        "-device", "virtio-serial-device",
        "-chardev", f"socket,id=agent,path={layout.agent},server=on,wait=off",
        "-device", "virtserialport,chardev=agent,name=corral.agent",
        "-device", "virtio-rng-device",
    ]
    if tap:
        argv += ["-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
                 "-device", f"virtio-net-device,netdev=n0,mac={mac}"]
    return argv

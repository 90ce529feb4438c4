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
    """Every file of one VM: all under `dir` (the agent's). QEMU sees only
    `disk` (its overlay), bound into its jail; its sockets and log are file
    descriptors the agent hands it."""
    dir: Path

    @property
    def disk(self) -> Path: return self.dir / "disk"
    @property
    def overlay(self) -> Path: return self.disk / "overlay.qcow2"
    @property
    def qmp(self) -> Path: return self.dir / "qmp.sock"
    @property
    def agent(self) -> Path: return self.dir / "agent.sock"
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


TCG_TB_MIB = 128  # TCG's translation cache: bounded (QEMU's default is 1 GiB)
# QEMU's own seccomp filter: no obsolete syscalls, no set*id, no fork/exec, no
# scheduler or affinity changes.
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
CONSOLE_RING = "64K"  # the guest's ttyS0, kept in QEMU's memory (ringbuf-read)


def accel_args(accel: str, vcpus: int) -> list[str]:
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", f"tcg,thread=multi,tb-size={TCG_TB_MIB}", "-cpu", "max"]


@dataclass(frozen=True)
class MemFile:
    """Guest RAM in a memory file descriptor (a memfd the agent made): `share`
    (MAP_SHARED) for a template being built, private (copy-on-write) for a
    clone mapping the template's RAM (write-sealed: no VM can change it)."""
    fd: int
    share: bool


@dataclass(frozen=True)
class Fds:
    """The descriptor numbers QEMU inherits (jail.spec.FdPlan assigns them)."""
    qmp: int
    agent: int
    tap: int | None = None
    mem: int | None = None
    state: int | None = None  # an incoming migration's stream

    @classmethod
    def placeholders(cls, net: bool) -> Fds:
        """Stand-ins for the template key: the numbers are not the device model."""
        return cls(90, 91, 92 if net else None)


MEM_ID = "mem"  # the RAM block id: identical in every VM, so states load anywhere


def memory_args(memory_mib: int, mem: MemFile | None, fds: Fds) -> list[str]:
    if mem is None or fds.mem is None:
        obj = f"memory-backend-ram,id={MEM_ID},size={memory_mib}M"
    else:
        obj = (f"memory-backend-file,id={MEM_ID},size={memory_mib}M,"
               f"mem-path=/proc/self/fd/{fds.mem},share={'on' if mem.share else 'off'}")
    return ["-m", str(memory_mib), "-object", obj]


def qemu_argv(*, sandbox_id: str, layout: VmLayout, kernel: Path, initrd: Path,
              accel: str, vcpus: int, memory_mib: int, append: str, fds: Fds,
              mac: str | None = None, mem: MemFile | None = None) -> list[str]:
    argv = [
        QEMU, "-name", f"corral-{sandbox_id}",
        "-M", f"microvm,x-option-roms=off,isa-serial=on,rtc=on,memory-backend={MEM_ID}",
        *accel_args(accel, vcpus),
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-sandbox", SANDBOX,
        "-smp", str(vcpus), *memory_args(memory_mib, mem, fds),
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", append,
        "-chardev", f"ringbuf,id=console,size={CONSOLE_RING}", "-serial", "chardev:console",
        "-chardev", f"socket,id=qmp,fd={fds.qmp},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        "-drive", f"id=root,file={layout.overlay},format=qcow2,if=none,discard=unmap",
        "-device", "virtio-blk-device,drive=root",
        "-device", "virtio-serial-device",
        "-chardev", f"socket,id=agent,fd={fds.agent},server=on,wait=off",
        "-device", "virtserialport,chardev=agent,name=corral.agent",
        "-device", "virtio-rng-device",
    ]
    if fds.tap is not None:
        argv += ["-netdev", f"tap,id=n0,fd={fds.tap}",
                 "-device", f"virtio-net-device,netdev=n0,mac={mac}"]
    if fds.state is not None:
        argv += ["-incoming", "defer"]
    return argv

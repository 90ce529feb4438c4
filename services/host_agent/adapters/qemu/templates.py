"""Snapshot templates: keys, manifests, and an on-disk store with atomic publish.

A template is a directory holding a paused guest's RAM (`memory`, the file
that backed it, shared), its device state (`state`, a migration stream with
`x-ignore-shared`: RAM is not in it), the qcow2 overlay exactly as it was at
that instant (`overlay.qcow2`), and a `manifest.json`. Clones map `memory`
copy-on-write (MAP_PRIVATE), so a restore reads ~70 KB instead of ~70 MB and
untouched guest pages stay shared in the host page cache. The files are never
written after publish (replacement is rename + unlink, which clones survive).
A live snapshot has no `memory`: its RAM is in its (full) migration stream.
It is keyed by a hash of everything that makes a restore valid (image digest,
kernel, initrd, QEMU version, accel, vcpus, memory, device model): any change
gives a new key, so a stale template is never used.

Directories are built under `<root>/.build-<key>-*`, then published with one
`rename`; readers only trust a directory whose manifest validates. One
builder per key holds `<root>/.lock-<key>` (fcntl), re-checks after
acquiring it, and removes temp dirs left by builders that were killed.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import IO

from .cmdline import QEMU

FORMAT = 1
# Bump when the device model or guest identity hand-off changes in a way the
# argv hash below cannot see (e.g. guest agent restore semantics).
DEVICE_MODEL_VERSION = "microvm-2"  # 2: RAM from memory-backend id "mem"
TEMPLATE_MAC = "02:c0:7e:00:00:01"  # every template NIC; clones get their own
STATE, OVERLAY, MEMORY, MANIFEST = "state", "overlay.qcow2", "memory", "manifest.json"


class TemplateInvalid(ValueError):
    """A template/snapshot directory is incomplete, corrupt or for other inputs."""


@lru_cache(maxsize=4)
def qemu_version(binary: str = QEMU) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.splitlines()[0].strip() if out else "unknown"


def file_identity(path: Path) -> str:
    """Path, size and mtime: changes whenever the file is replaced or rewritten."""
    st = os.stat(path)
    return f"{Path(path).resolve()}:{st.st_size}:{st.st_mtime_ns}"


@dataclass(frozen=True)
class LaunchParams:
    """Everything the device model of a restorable VM depends on."""
    image: str
    image_digest: str
    kernel: str
    initrd: str
    accel: str
    vcpus: int
    memory_mib: int
    append: str
    net: bool
    mac: str | None  # the MAC on the virtio-net device (migrated with the device)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LaunchParams:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def key_inputs(p: LaunchParams, argv_shape: list[str]) -> dict:
    """The template key's inputs. `argv_shape`: the QEMU argv with per-VM paths
    replaced by placeholders (so any command-line change invalidates)."""
    return {
        "format": FORMAT,
        "device_model": DEVICE_MODEL_VERSION,
        "image": p.image,
        "image_digest": p.image_digest,
        "kernel": file_identity(Path(p.kernel)),
        "initrd": file_identity(Path(p.initrd)),
        "qemu": qemu_version(),
        "accel": p.accel,
        "vcpus": p.vcpus,
        "memory_mib": p.memory_mib,
        "net": p.net,
        "argv": hashlib.sha256("\0".join(argv_shape).encode()).hexdigest(),
    }


def template_key(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Template:
    key: str
    dir: Path
    launch: LaunchParams
    manifest: dict = field(repr=False, default_factory=dict)

    @property
    def state(self) -> Path: return self.dir / STATE
    @property
    def overlay(self) -> Path: return self.dir / OVERLAY
    @property
    def memory(self) -> Path: return self.dir / MEMORY


def data_files(kind: str) -> tuple[str, ...]:
    """The files a manifest of `kind` vouches for (by size)."""
    return (STATE, OVERLAY, MEMORY) if kind == "template" else (STATE, OVERLAY)


def write_manifest(d: Path, *, kind: str, key: str | None, inputs: dict,
                   launch: LaunchParams, extra: dict | None = None) -> dict:
    files = data_files(kind)
    for f in files:  # data on disk before the manifest that vouches for it
        with open(d / f, "rb") as fh:
            os.fsync(fh.fileno())
    m = {"format": FORMAT, "kind": kind, "key": key, "inputs": inputs,
         "launch": launch.to_dict(),
         "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
         "sizes": {f: (d / f).stat().st_size for f in files},
         **(extra or {})}
    tmp = d / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(m, indent=2, sort_keys=True))
    with open(tmp) as fh:
        os.fsync(fh.fileno())
    os.rename(tmp, d / MANIFEST)
    return m


def validate_manifest(m: object, d: Path | None = None, *, key: str | None = None,
                      inputs: dict | None = None) -> LaunchParams:
    """Raise TemplateInvalid unless `m` is a complete manifest (for `key`/`inputs`
    if given) whose files in `d` exist with the recorded sizes."""
    if not isinstance(m, dict):
        raise TemplateInvalid("manifest is not an object")
    if m.get("format") != FORMAT:
        raise TemplateInvalid(f"manifest format {m.get('format')!r}, want {FORMAT}")
    if m.get("kind") not in ("template", "snapshot"):
        raise TemplateInvalid(f"unknown kind {m.get('kind')!r}")
    files = data_files(m["kind"])
    try:
        launch = LaunchParams.from_dict(m["launch"])
        sizes = {f: int(m["sizes"][f]) for f in files}
    except (KeyError, TypeError, ValueError) as e:
        raise TemplateInvalid(f"manifest incomplete: {e!r}") from None
    if not (1 <= launch.vcpus <= 64 and 64 <= launch.memory_mib <= 65536):
        raise TemplateInvalid("vcpus/memory_mib out of range")
    if key is not None:
        if m.get("key") != key:
            raise TemplateInvalid("manifest key does not match")
        if inputs is not None and template_key(m.get("inputs") or {}) != key:
            raise TemplateInvalid("manifest inputs do not hash to its key")
    if inputs is not None and m.get("inputs") != inputs:
        raise TemplateInvalid("manifest inputs differ from the current ones")
    if d is not None:
        _check_sizes(d, sizes)
    return launch


def _check_sizes(d: Path, sizes: dict[str, int]) -> None:
    for f, size in sizes.items():
        try:
            actual = (d / f).stat().st_size
        except OSError:
            raise TemplateInvalid(f"{f} missing") from None
        if actual != size or size == 0:
            raise TemplateInvalid(f"{f} is {actual} bytes, manifest says {size}")


def read_manifest(d: Path) -> dict:
    try:
        return json.loads((d / MANIFEST).read_text())
    except FileNotFoundError:
        raise TemplateInvalid(f"no manifest in {d}") from None
    except (OSError, ValueError) as e:
        raise TemplateInvalid(f"unreadable manifest in {d}: {e}") from None


SMALL_COPY = 16 << 20  # a template's overlay (~400 KiB): no process to start


def copy_file(src: Path, dst: Path) -> None:
    """Reflink where the filesystem can, else a plain (sparse-aware) copy.
    Small files are copied in-process (copy_file_range)."""
    if os.stat(src).st_size <= SMALL_COPY:
        shutil.copyfile(src, dst)
        return
    r = subprocess.run(["cp", "--reflink=auto", "--sparse=always", str(src), str(dst)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise OSError(f"cp {src} {dst}: {r.stderr.strip()}")


class TemplateStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @staticmethod
    def class_name(image: str, vcpus: int, memory_mib: int) -> str:
        return f"{image}-c{vcpus}-m{memory_mib}"

    def dir_for(self, cls: str, key: str) -> Path:
        return self.root / f"{cls}-{key[:16]}"

    def find(self, cls: str, key: str, inputs: dict) -> Template | None:
        d = self.dir_for(cls, key)
        if not d.is_dir():
            return None
        try:
            m = read_manifest(d)
            launch = validate_manifest(m, d, key=key, inputs=inputs)
        except TemplateInvalid:
            return None
        return Template(key, d, launch, m)

    def lock(self, key: str) -> _Lock:
        self.root.mkdir(parents=True, exist_ok=True)
        return _Lock(self.root / f".lock-{key[:32]}")

    def new_build_dir(self, key: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".build-{key[:32]}-", dir=self.root))

    def clean_builds(self, key: str | None = None) -> list[Path]:
        """Remove temp build dirs whose builder is gone. With `key`, the caller
        holds that key's lock; otherwise only dirs whose lock is free go."""
        removed: list[Path] = []
        if not self.root.is_dir():
            return removed
        for d in self.root.iterdir():
            if not d.name.startswith((".build-", ".trash-")):
                continue
            k = d.name.split("-")[1] if d.name.startswith(".build-") else None
            if key is not None and k != key[:32]:
                continue
            if key is None and k is not None:
                lk = self.lock(k)
                if not lk.acquire(blocking=False):
                    continue  # a builder is at work
                try:
                    shutil.rmtree(d, ignore_errors=True)
                finally:
                    lk.release()
            else:
                shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
        return removed

    def publish(self, build_dir: Path, cls: str, key: str) -> Path:
        """Atomically move a complete build dir into place (replacing a broken one)."""
        final = self.dir_for(cls, key)
        if final.exists():
            trash = Path(tempfile.mkdtemp(prefix=".trash-", dir=self.root))
            os.rename(final, trash / "old")
            shutil.rmtree(trash, ignore_errors=True)
        os.rename(build_dir, final)
        _fsync_dir(self.root)
        return final

    def prune_class(self, cls: str, keep_key: str) -> list[Path]:
        """Remove this class's templates for other keys (stale inputs)."""
        out = []
        keep = self.dir_for(cls, keep_key).name
        for d in self.root.iterdir() if self.root.is_dir() else []:
            if d.name.startswith(cls + "-") and d.name != keep \
                    and re.fullmatch(re.escape(cls) + r"-[0-9a-f]{16}", d.name):
                trash = Path(tempfile.mkdtemp(prefix=".trash-", dir=self.root))
                try:
                    os.rename(d, trash / "old")
                except OSError:
                    pass
                shutil.rmtree(trash, ignore_errors=True)
                out.append(d)
        return out


class _Lock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._f: IO[str] | None = None

    def acquire(self, blocking: bool = True) -> bool:
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            f.close()
            return False
        self._f = f
        return True

    def release(self) -> None:
        if self._f is not None:
            fcntl.flock(self._f, fcntl.LOCK_UN)
            self._f.close()
            self._f = None


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""ensure_image(): content-addressed guest images, built once per name under a lock."""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from . import init_script, initramfs, kernel, rootfs

log = logging.getLogger("corral.host_agent.guest_image")
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
LAYOUT_VERSION = "2"  # 2: runtime.tar
IMAGES = {"default": {"suite": rootfs.SUITE, "packages": rootfs.PACKAGES}}


@dataclass(frozen=True)
class ImagePaths:
    kernel: Path
    initrd: Path
    rootfs: Path
    digest: str
    # the agent and its Python, injected into imported images (built-ins only)
    runtime: Path | None = field(default=None, compare=False)
    # a built image's config: env, cwd, user (execs), cmd, entrypoint, labels
    config: dict = field(default_factory=dict, compare=False)

    def exec_defaults(self, env: dict[str, str]) -> dict:
        """configure's arguments: the image's env under the sandbox's, cwd, user."""
        c = self.config
        return {"env": {**c.get("env", {}), **env},
                "defaults": {k: c[k] for k in ("cwd", "user") if c.get(k)}}


def image_root() -> Path:
    env = os.environ.get("CORRAL_IMAGE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "corral" / "images"


def _deb_version(pkg: str) -> str:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg],
                       capture_output=True, text=True, check=False)
    return r.stdout.strip() or "absent"


def code_inputs(name: str) -> dict:
    """What this code decides about an image: layout, packages, the guest
    agent and builder sources. The host's apt state is not in it."""
    if name not in IMAGES:
        raise KeyError(f"unknown image {name!r}; known: {sorted(IMAGES)}")
    here = Path(__file__).resolve().parent
    srcs = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(here.glob("*.py")) if p.name not in ("__main__.py",)}
    srcs.update({f"guest/{k}": hashlib.sha256(v).hexdigest()
                 for k, v in rootfs.guest_sources().items()})
    return {"layout": LAYOUT_VERSION, "name": name, "modules": kernel.MODULES,
            "image": IMAGES[name], "sources": srcs}


@cache
def image_inputs(name: str) -> dict:
    """Everything that determines the image's bytes (mmdebstrap output aside):
    the code's inputs and the kernel and busybox this host's apt would use."""
    return {**code_inputs(name), "kernel_package": kernel.resolve_kernel_package(),
            "busybox": _deb_version("busybox-static")}


def built_for_this_code(name: str) -> ImagePaths | None:
    """The newest complete image of `name` built from this code, whatever the
    kernel and busybox of the host that built it: for a host without apt
    state (a container given the image directory of a host that built it)."""
    want = json.loads(json.dumps(code_inputs(name)))  # as the manifest stores it
    found: list[tuple[str, Path, str]] = []
    for d in image_root().glob(f"{name}-*"):
        if not re.fullmatch(rf"{name}-[0-9a-f]{{16}}", d.name) or not _complete(d):
            continue
        doc = json.loads((d / "manifest.json").read_text())
        if {k: doc.get(k) for k in want} == want:
            found.append((str(doc.get("built_at", "")), d, str(doc["digest"])))
    if not found:
        return None
    _, d, digest = max(found)
    return _paths(d, digest)


def digest_of(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _paths(d: Path, digest: str) -> ImagePaths:
    return ImagePaths(d / "vmlinux", d / "initrd.cpio", d / "rootfs.ext4", digest,
                      runtime=d / "runtime.tar")


def _complete(d: Path) -> bool:
    return (d / "manifest.json").is_file()


def find_image(name: str = "default") -> ImagePaths | None:
    """The cached image for `name` if it is already built, without building."""
    try:
        digest = digest_of(image_inputs(name))
    except kernel.ImageBuildError:  # no apt state here
        return built_for_this_code(name)
    final = image_root() / f"{name}-{digest[:16]}"
    return _paths(final, digest) if _complete(final) else None


def ensure_image(name: str = "default", *, rebuild: bool = False) -> ImagePaths:
    """Return the image for `name`, building it if absent. Safe across processes."""
    if not NAME_RE.match(name):
        raise ValueError(f"invalid image name {name!r}")
    try:
        inputs = image_inputs(name)
    except kernel.ImageBuildError as e:  # no apt state here: cannot build, may find one
        built = built_for_this_code(name)
        if built is None:
            raise kernel.ImageBuildError(
                f"{e}; and {image_root()} holds no {name!r} image built from this code "
                "(build it with `make image` on a host with apt, and share the directory "
                "as CORRAL_IMAGE_DIR)") from None
        log.info("guest image built elsewhere for this code",
                 extra={"image": name, "digest": built.digest})
        return built
    digest = digest_of(inputs)
    root = image_root()
    final = root / f"{name}-{digest[:16]}"
    if _complete(final) and not rebuild:
        return _paths(final, digest)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{name}.lock", "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        if _complete(final) and not rebuild:  # another builder won the race
            return _paths(final, digest)
        _build(final, name, inputs, digest)
    return _paths(final, digest)


def _build(final: Path, name: str, inputs: dict, digest: str) -> None:
    root = final.parent
    t0 = time.monotonic()
    log.info("building guest image", extra={"image": name, "digest": digest})
    tmp = Path(tempfile.mkdtemp(prefix=f".build-{name}-", dir=root))
    try:
        out = tmp / "out"
        out.mkdir()
        k = kernel.fetch_kernel(inputs["kernel_package"], tmp)
        os.rename(k.vmlinux, out / "vmlinux")
        initramfs.build_initramfs(out / "initrd.cpio", k.modules)
        t_k = time.monotonic()
        rootfs.build_rootfs(out / "rootfs.ext4", tmp, out / "runtime.tar")
        for f in ("vmlinux", "initrd.cpio", "rootfs.ext4", "runtime.tar"):
            os.chmod(out / f, 0o444)  # shared by running VMs: never written in place
        manifest = {**inputs, "digest": digest,
                    "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "build_s": round(time.monotonic() - t0, 1),
                    "kernel_initrd_s": round(t_k - t0, 1),
                    "sizes": {f: (out / f).stat().st_size
                              for f in ("vmlinux", "initrd.cpio", "rootfs.ext4",
                                        "runtime.tar")}}
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if final.exists():  # rebuild: move the old one aside, running VMs keep their fds
            os.rename(final, tmp / "old")
        os.rename(out, final)
        log.info("guest image built", extra={"image": name, "digest": digest,
                                             "build_s": manifest["build_s"]})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def prune(name: str = "default") -> list[Path]:
    """Remove built images of `name` other than the current digest. Only run this when
    no VM uses an old image: overlays name their backing file by path."""
    keep = image_root() / f"{name}-{digest_of(image_inputs(name))[:16]}"
    gone = []
    with open(image_root() / f"{name}.lock", "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        for d in image_root().glob(f"{name}-*"):
            if d != keep and d.is_dir() and re.fullmatch(rf"{name}-[0-9a-f]{{16}}", d.name):
                shutil.rmtree(d)
                gone.append(d)
    return gone


def manifest(paths: ImagePaths) -> dict:
    return json.loads((paths.rootfs.parent / "manifest.json").read_text())


__all__ = [
    "ImagePaths",
    "built_for_this_code",
    "code_inputs",
    "ensure_image",
    "find_image",
    "image_inputs",
    "image_root",
    "init_script",
    "manifest",
    "prune",
]

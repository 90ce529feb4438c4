"""Custom images on a host: build layers and images as read-only ext4 files
named by content key, published atomically, shared by identical builds.

    <root>/layers/<key>.ext4   a step's flattened root filesystem
    <root>/images/<digest>/    rootfs.ext4 (a hard link to its last layer) and
                               config.json (env, cwd, user, cmd, entrypoint...)

Refs the driver resolves: `l-<key[:40]>` (a layer: build VMs) and
`c-<digest[:40]>` (an image: sandboxes). Kernel and initrd are the built-in
image's."""
from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from services.host_agent.adapters.guest_image import ImagePaths

REF_RE = re.compile(r"^([cl])-([0-9a-f]{40})$")
KEY_RE = re.compile(r"^[0-9a-f]{64}$")


def content_key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def image_ref(digest: str) -> str:
    return f"c-{digest[:40]}"


def layer_ref(key: str) -> str:
    return f"l-{key[:40]}"


class ImageStore:
    def __init__(self, root: Path, builtin: Callable[[str], ImagePaths]) -> None:
        self.root = Path(root)
        self.builtin = builtin  # name -> built-in image (kernel and initrd come from "default")
        for d in ("layers", "images", "locks", "tmp"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, asyncio.Lock] = {}

    # -- paths ------------------------------------------------------------------
    def layer_file(self, key: str) -> Path:
        if not KEY_RE.match(key):
            raise ValueError(f"bad layer key {key!r}")
        return self.root / "layers" / f"{key}.ext4"

    def image_dir(self, digest: str) -> Path:
        if not KEY_RE.match(digest):
            raise ValueError(f"bad image digest {digest!r}")
        return self.root / "images" / digest

    def has_layer(self, key: str) -> bool:
        return self.layer_file(key).is_file()

    def has_image(self, digest: str) -> bool:
        return (self.image_dir(digest) / "config.json").is_file()

    def tmp_file(self, suffix: str = ".ext4") -> Path:
        fd, name = tempfile.mkstemp(suffix=suffix, dir=self.root / "tmp")
        os.close(fd)
        return Path(name)

    # -- resolve ----------------------------------------------------------------
    def resolve(self, name: str) -> ImagePaths:
        """A built-in image by name, a layer or an image by ref."""
        m = REF_RE.match(name)
        if m is None:
            return self.builtin(name)
        base = self.builtin("default")
        kind, prefix = m.groups()
        if kind == "l":
            hits = sorted((self.root / "layers").glob(f"{prefix}*.ext4"))
            if len(hits) != 1:
                raise KeyError(f"no layer {name}")
            return ImagePaths(base.kernel, base.initrd, hits[0], hits[0].stem)
        hits = [d for d in (self.root / "images").glob(f"{prefix}*")
                if (d / "config.json").is_file()]
        if len(hits) != 1:
            raise KeyError(f"no image {name} on this host")
        config = json.loads((hits[0] / "config.json").read_text())
        return ImagePaths(base.kernel, base.initrd, hits[0] / "rootfs.ext4", hits[0].name,
                          config=config)

    # -- publish ----------------------------------------------------------------
    def publish_layer(self, key: str, src: Path, meta: dict) -> Path:
        """Move a finished root filesystem in as layer `key` (first one wins)."""
        dest = self.layer_file(key)
        os.chmod(src, 0o444)
        if dest.exists():
            src.unlink(missing_ok=True)
            return dest
        (self.root / "layers" / f"{key}.json").write_text(json.dumps(meta, default=str))
        os.rename(src, dest)
        return dest

    def publish_image(self, digest: str, layer: Path, config: dict) -> Path:
        """Image `digest`: its rootfs a hard link to `layer`, with its config;
        appears whole (a directory renamed in) or not at all."""
        final = self.image_dir(digest)
        if self.has_image(digest):
            return final
        tmp = Path(tempfile.mkdtemp(prefix=".img-", dir=self.root / "tmp"))
        try:
            os.link(layer, tmp / "rootfs.ext4")
            size = (tmp / "rootfs.ext4").stat().st_blocks * 512
            (tmp / "config.json").write_text(json.dumps(
                {**config, "digest": digest, "size_bytes": size,
                 "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1))
            os.chmod(tmp, 0o755)
            try:
                os.rename(tmp, final)
            except OSError:
                if not self.has_image(digest):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    def config(self, digest: str) -> dict:
        return json.loads((self.image_dir(digest) / "config.json").read_text())

    # -- concurrency ------------------------------------------------------------
    @asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[None]:
        """One builder of `key` at a time, in this process and across processes."""
        async with self._locks.setdefault(key, asyncio.Lock()):
            f = open(self.root / "locks" / f"{key[:40]}.lock", "w")
            try:
                while True:
                    try:
                        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        await asyncio.sleep(0.2)
                yield
            finally:
                f.close()

    # -- garbage collection -----------------------------------------------------
    def gc(self, keep_images: set[str], in_use: set[str], layer_budget_bytes: int) -> list[str]:
        """Remove images neither kept nor in use (a sandbox's disk backs onto
        them), then the least recently used layers over the budget that no
        image links to. Returns what was removed."""
        gone: list[str] = []
        for d in (self.root / "images").iterdir():
            if d.name not in keep_images and d.name not in in_use and KEY_RE.match(d.name):
                shutil.rmtree(d)
                gone.append(f"image {d.name[:16]}")
        layers = sorted((self.root / "layers").glob("*.ext4"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_blocks * 512 for p in layers)
        for p in layers:
            if total <= layer_budget_bytes:
                break
            st = p.stat()
            if st.st_nlink > 1 or p.stem in in_use:
                continue  # an image's rootfs, or a build is on it
            p.unlink()
            (p.parent / f"{p.stem}.json").unlink(missing_ok=True)
            total -= st.st_blocks * 512
            gone.append(f"layer {p.stem[:16]}")
        return gone

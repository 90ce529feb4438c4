"""What the host agent's build use case needs from the images adapter: the
bases a FROM may name, removal of a deleted image's files, and an in-memory
record of a build VM's kernel objects."""
from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

from services.host_agent.adapters.guest_image.builder import IMAGES

from ..qemu.qcow2 import backing_file
from .build import Base
from .store import ImageStore

log = logging.getLogger("corral.host_agent.images")


def bases_for(store: ImageStore) -> Callable[[dict[str, str]], Callable[[str], Base]]:
    """`org_bases` (name -> ref, the org's ready images, from the request):
    FROM may name one of them or a built-in image, nothing else."""
    def for_request(org_bases: dict[str, str]) -> Callable[[str], Base]:
        def base_of(name: str) -> Base:
            if name in org_bases:
                ref = org_bases[name]
                try:
                    p = store.resolve(ref)
                except KeyError:
                    raise KeyError(f"image {name} is not on this host") from None
                return Base(p.digest, ref, p.rootfs)
            if name in IMAGES:
                p = store.builtin(name)
                return Base(f"builtin:{p.digest}", name, p.rootfs)
            raise KeyError(f"no image {name!r}: FROM takes a built-in image "
                           f"({', '.join(sorted(IMAGES))}) or one of your ready images")
        return base_of
    return for_request


def _backed_by(state_root: Path, rootfs: Path) -> bool:
    """Whether any VM disk under `state_root` (running or stopped) backs onto `rootfs`."""
    for overlay in state_root.glob("*/disk/overlay.qcow2"):
        try:
            b = backing_file(overlay)
        except OSError:
            continue
        if b is not None and Path(overlay.parent, b).resolve() == rootfs.resolve():
            return True
    return False


def remover(store: ImageStore, driver: object,
            layer_budget_bytes: int) -> Callable[[str], Awaitable[bool]]:
    async def remove(digest: str) -> bool:
        """Drop an image's files unless a VM's disk still backs onto them; then
        trim the layer cache to its budget. False: kept (in use)."""
        d = store.image_dir(digest)
        state_root = getattr(driver, "state_root", None)
        if state_root is not None and await asyncio.to_thread(
                _backed_by, Path(state_root), d / "rootfs.ext4"):
            log.warning("image %s still backs a sandbox's disk; its files stay", digest[:16])
            return False
        await asyncio.to_thread(shutil.rmtree, d, True)
        keep = {p.name for p in (store.root / "images").iterdir()}
        gone = await asyncio.to_thread(store.gc, keep, set(), layer_budget_bytes)
        log.info("image %s removed", digest[:16], extra={"gc": ",".join(gone)})
        return True
    return remove


class InMemoryRecorder:
    """A build VM's resources, for its own teardown (a build does not survive
    an agent restart: the next agent kills its QEMU as unrecorded)."""

    def __init__(self) -> None:
        self.by_sid: dict[str, dict[str, str]] = {}

    async def __call__(self, sid: str, kind: str, value: str | None) -> None:
        res = self.by_sid.setdefault(sid, {})
        if value is None:
            res.pop(kind, None)
        else:
            res[kind] = value

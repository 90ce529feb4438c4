"""Org-owned custom images, built from a Dockerfile or imported from an OCI
archive on a host. Their events travel on the sandbox family's subjects with
the image id where a sandbox id goes (corral.evt.sandbox.<org>.<image>.<Type>;
a host's facts under corral.evt.hostfact.<host>.<org>.<image>.<Type>)."""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from .envelope import NAME_RE, Envelope, Id
from .sandbox import Failure

BUILTIN_IMAGES = ("default",)  # built by every host from the project's recipe
IMAGE_REF = r"^(default|c-[0-9a-f]{40})$"  # what a VM boots: built-in, or a built image
SOURCES = ("dockerfile", "oci")


class ImageEvent(Envelope):
    org_id: Id
    image_id: Id


class ImageBuildRequested(ImageEvent):
    type: Literal["ImageBuildRequested"] = "ImageBuildRequested"
    name: str = Field(min_length=1, max_length=63, pattern=NAME_RE.pattern)
    source: Literal["dockerfile", "oci"] = "dockerfile"
    dockerfile: str = Field(default="Dockerfile", min_length=1, max_length=255)
    build_args: dict[str, str] = Field(default_factory=dict, max_length=64)
    # the org's images a FROM may name: name -> ref (the built-ins resolve on the host)
    bases: dict[str, str] = Field(default_factory=dict, max_length=256)
    context_bytes: int = Field(ge=0)
    context_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    vcpus: int = Field(default=1, ge=1, le=16)
    memory_mib: int = Field(default=1024, ge=256, le=65536)
    timeout_s: int = Field(default=1800, ge=10, le=86400)


class ImageBuildScheduled(ImageEvent):
    type: Literal["ImageBuildScheduled"] = "ImageBuildScheduled"
    host_id: Id


class ImageBuildLogged(ImageEvent):
    """Build output, in order (`seq`), a few KiB at a time."""
    type: Literal["ImageBuildLogged"] = "ImageBuildLogged"
    host_id: Id
    seq: int = Field(ge=0)
    text: str = Field(max_length=16384)


class ImageBuilt(ImageEvent):
    type: Literal["ImageBuilt"] = "ImageBuilt"
    host_id: Id
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    ref: str = Field(pattern=IMAGE_REF)
    size_bytes: int = Field(ge=0)
    took_ms: int = Field(ge=0)
    config: dict[str, Any] = Field(default_factory=dict)  # env, cwd, user, cmd, entrypoint...
    steps: list[dict[str, Any]] = Field(default_factory=list, max_length=2000)


class ImageBuildFailed(ImageEvent):
    type: Literal["ImageBuildFailed"] = "ImageBuildFailed"
    host_id: Id | None = None
    failure: Failure
    line: int | None = Field(default=None, ge=1)  # the Dockerfile line to blame


class ImageDeleteRequested(ImageEvent):
    type: Literal["ImageDeleteRequested"] = "ImageDeleteRequested"
    host_id: Id | None = None  # where it was built; None if it never was
    digest: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class ImageDeleted(ImageEvent):
    type: Literal["ImageDeleted"] = "ImageDeleted"
    host_id: Id | None = None


class ImageCommand(Envelope):
    KIND: ClassVar[str] = "command"
    host_id: Id
    org_id: Id
    image_id: Id


class BuildImage(ImageCommand):
    type: Literal["BuildImage"] = "BuildImage"
    request: ImageBuildRequested


class DeleteImage(ImageCommand):
    type: Literal["DeleteImage"] = "DeleteImage"
    digest: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")

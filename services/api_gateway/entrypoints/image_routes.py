"""Custom images: build from a Dockerfile context or import an OCI archive,
list, inspect, delete, and follow a build's log (SSE)."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from contracts.envelope import NAME_RE

from ..application.errors import Unprocessable
from ..domain.image import image_view
from .deps import Ctx, OpId, Org
from .problems import problem
from .sse import error_event

image_router = APIRouter(tags=["images"])
Id = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
TAR = "application/x-tar"
SEQ = r"^[0-9]{1,19}$"


class ImageOut(BaseModel):
    id: str
    name: str
    org_id: str
    state: str
    source: str
    digest: str | None
    size_bytes: int | None
    created_at: str
    failure: dict[str, Any] | None
    host_id: str | None
    build_ms: int | None
    steps: list[dict[str, Any]]
    config: dict[str, Any]


class ImagePage(BaseModel):
    items: list[ImageOut]


def _build_args(raw: list[str]) -> dict[str, str]:
    out = {}
    for item in raw:
        k, eq, v = item.partition("=")
        if not eq or not k:
            raise Unprocessable(f"build_arg {item[:64]!r} is not KEY=VALUE")
        out[k] = v
    return out


@image_router.post("/v1/images", status_code=202, response_model=ImageOut,
                   openapi_extra={"requestBody": {"required": True, "content": {
                       TAR: {"schema": {"type": "string", "format": "binary"}},
                       "application/vnd.oci.image.layout.v1+tar": {
                           "schema": {"type": "string", "format": "binary"}}}}},
                   responses={201: {"model": ImageOut, "description": "ready (?wait=true)"},
                              502: {"description": "with ?wait=true: the build failed"}})
async def build_image(
    request: Request, ctx: Ctx, oid: OpId, org: Org,
    name: Annotated[str, Query(min_length=1, max_length=63, pattern=NAME_RE.pattern)],
    dockerfile: Annotated[str, Query(min_length=1, max_length=255)] = "Dockerfile",
    build_arg: Annotated[list[str], Query(max_length=64)] = [],  # noqa: B006
    content_type: Annotated[str, Header()] = TAR,
    wait: bool = False, timeout_s: Annotated[float, Query(gt=0, le=3600)] = 1800,
) -> Any:
    """A build context (a tar holding the Dockerfile) or an OCI / `docker save`
    archive; 202 with the image `building`, its log at `/v1/images/{id}/logs`."""
    kind = content_type.split(";")[0].strip().lower()
    if kind not in (TAR, "application/vnd.oci.image.layout.v1+tar",
                    "application/x-docker-archive"):
        return problem(415, f"send {TAR} (a build context) or an OCI layout tar", oid)
    body = await request.body()
    img = await ctx.images.build(org.org_id, name, body, kind, dockerfile,
                                 _build_args(build_arg), oid)
    if not wait:
        return JSONResponse(image_view(img), status_code=202)
    img = await ctx.images.wait(img, org.org_id, timeout_s)
    if img.state == "ready":
        return JSONResponse(image_view(img), status_code=201)
    if img.state == "building":
        return JSONResponse(image_view(img), status_code=202)
    return problem(502, f"image build {img.state}", oid, code="image-" + img.state,
                   image_id=str(img.id), failure=img.failure)


@image_router.get("/v1/images", response_model=ImagePage)
async def list_images(ctx: Ctx, org: Org) -> dict:
    return {"items": [image_view(i) for i in await ctx.images.list(org.org_id)]}


@image_router.get("/v1/images/{image_id}", response_model=ImageOut)
async def get_image(ctx: Ctx, org: Org, image_id: Id) -> dict:
    return image_view(await ctx.images.find(image_id, org.org_id))


@image_router.delete("/v1/images/{image_id}", status_code=202, response_model=ImageOut)
async def delete_image(ctx: Ctx, oid: OpId, org: Org, image_id: Id) -> dict:
    return image_view(await ctx.images.delete(image_id, org.org_id, oid))


@image_router.get("/v1/images/{image_id}/logs", response_class=StreamingResponse,
                  responses={200: {"content": {"text/event-stream": {
                      "schema": {"type": "string"}}}, "description":
                      "`event: log` (data: {seq, text}), then `event: ImageBuilt` or "
                      "`ImageBuildFailed`; the stream ends there"}})
async def image_logs(ctx: Ctx, oid: OpId, org: Org, image_id: Id,
                     last_event_id: Annotated[str | None, Header(alias="Last-Event-ID",
                                                                 pattern=SEQ)] = None
                     ) -> StreamingResponse:
    await ctx.images.find(image_id, org.org_id)  # 404 now, not a broken stream
    after = int(last_event_id) if last_event_id else None
    return StreamingResponse(_logs(ctx, image_id, org.org_id, after, oid),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _logs(ctx: Ctx, image_id: str, org_id: str, after: int | None,
                op_id: str) -> AsyncIterator[bytes]:
    yield b"retry: 2000\n: connected\n\n"
    try:
        async for ev in ctx.images.logs(image_id, org_id, after):
            if ev is None:
                yield b": keepalive\n\n"
                continue
            name = "log" if ev["type"] == "ImageBuildLogged" else ev["type"]
            data = ({"seq": ev["seq"], "text": ev["text"]} if name == "log" else ev)
            yield f"id: {ev['seq']}\nevent: {name}\ndata: {json.dumps(data)}\n\n".encode()
            if name != "log":
                return
    except Exception:  # noqa: BLE001 - the bus went away: the client resumes
        yield error_event("unavailable", "the log stream is unavailable; resume with the "
                          "last id", op_id)

"""Commands and files inside a running sandbox."""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from contracts.rpc import HostExecResult, HostFileEntries, HostFileStat

from ..application.errors import Unprocessable
from .deps import Ctx, OpId, Org
from .multipart import form_files
from .sse import exec_events

io_router = APIRouter(tags=["sandboxes"])
SandboxId = Annotated[str, Path(min_length=1, max_length=64)]
FilePath = Annotated[str | None, Query(min_length=1, max_length=4096, pattern=r"^/[^\x00]*$",
                                       description="absolute path (UTF-8)")]
FilePathB64 = Annotated[str | None, Query(
    min_length=4, max_length=5464, pattern=r"^[A-Za-z0-9+/]+={0,2}$",
    description="instead of `path`: the path's exact bytes, base64 (a name that is not "
                "UTF-8, as `name_b64` in a listing)")]


def _path(path: str | None, path_b64: str | None, name: str = "path") -> dict[str, str]:
    if (path is None) == (path_b64 is None):
        raise RequestValidationError([{"loc": ("query", name), "type": "missing",
                                       "msg": f"give exactly one of {name} and {name}_b64"}])
    return {"path": path} if path is not None else {"path_b64": path_b64 or ""}


class ExecIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cmd: list[Annotated[str, Field(max_length=65536)]] = Field(min_length=1, max_length=256)
    env: dict[str, str] = Field(default_factory=dict, max_length=128)
    cwd: str | None = Field(default=None, max_length=4096, pattern=r"^/[^\x00]*$")
    timeout_s: float = Field(default=60, gt=0, le=3600)
    stdin: str | None = Field(default=None, max_length=1 << 20)
    user: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_-]{0,31}$|^[0-9]{1,10}$",
                             description="run as this user of the image (`user` in the default "
                             "image; name or uid); default: the image's user (root)")

    @field_validator("cmd")
    @classmethod
    def _no_nul(cls, v: list[str]) -> list[str]:
        if any("\0" in a for a in v) or not v[0]:
            raise ValueError("arguments must be non-empty at [0] and contain no NUL")
        return v


@io_router.post("/v1/sandboxes/{sandbox_id}/exec", response_model=HostExecResult,
                responses={200: {"content": {"text/event-stream": {
                    "schema": {"type": "string"},
                    "description": "stdout/stderr chunks, then one exit (or error) event; "
                                   "see docs/api-streaming.md"}}}})
async def exec_in_sandbox(ctx: Ctx, oid: OpId, org: Org, sandbox_id: SandboxId, body: ExecIn,
                          accept: Annotated[str | None, Header(max_length=512)] = None,
                          ) -> HostExecResult | StreamingResponse:
    if accept and "text/event-stream" in accept:
        chunks = await ctx.io.exec_stream(org.org_id, sandbox_id, oid, body.model_dump())
        return StreamingResponse(exec_events(chunks, oid), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    return await ctx.io.exec(org.org_id, sandbox_id, oid, body.model_dump())


@io_router.put("/v1/sandboxes/{sandbox_id}/files", status_code=204,
               openapi_extra={"requestBody": {"content": {"application/octet-stream": {
                   "schema": {"type": "string", "format": "binary"}}}}})
async def put_file(request: Request, ctx: Ctx, oid: OpId, org: Org, sandbox_id: SandboxId,
                   path: FilePath = None, path_b64: FilePathB64 = None) -> Response:
    """The body, streamed (up to the gateway's `max_file_mib`): a large file goes
    in pieces to a hidden file beside the target, renamed over it at the end."""
    await ctx.transfers.upload(org.org_id, sandbox_id, oid, _path(path, path_b64),
                               request.stream())
    return Response(status_code=204)


class Written(BaseModel):
    path: str
    size: int


MAX_FORM_FILES = 1000


@io_router.post("/v1/sandboxes/{sandbox_id}/files", response_model=list[Written],
                openapi_extra={"requestBody": {"required": True, "content": {
                    "multipart/form-data": {"schema": {
                        "type": "object", "minProperties": 1,
                        "propertyNames": {"pattern": "^/[^\\x00]{1,4095}$"},
                        "additionalProperties": {"type": "string", "format": "binary"},
                        "description": "each part a file: its filename (or else its field "
                                       "name) the absolute path"}}}}})
async def write_files(request: Request, ctx: Ctx, oid: OpId, org: Org,
                      sandbox_id: SandboxId) -> list[Written]:
    """Many files in one multipart/form-data body: each part's filename is its
    absolute path. Written in order; each one atomically."""
    kind = request.headers.get("content-type", "")
    if not kind.startswith("multipart/form-data"):
        raise Unprocessable("the body must be multipart/form-data")
    files = form_files(kind, await request.body())
    if not files or len(files) > MAX_FORM_FILES:
        raise Unprocessable(f"give 1 to {MAX_FORM_FILES} parts, each with a filename "
                            "(its absolute path)")
    for name, _ in files:
        if not name.startswith("/") or "\x00" in name or len(name) > 4096:
            raise Unprocessable(f"{name[:100]!r} is not an absolute path")
    out = []
    for name, data in files:
        size = await ctx.transfers.upload(org.org_id, sandbox_id, oid, {"path": name},
                                          _once(data))
        out.append(Written(path=name, size=size))
    return out


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


@io_router.get("/v1/sandboxes/{sandbox_id}/files", response_class=Response,
               responses={200: {"content": {"application/octet-stream": {}}}})
async def get_file(ctx: Ctx, oid: OpId, org: Org, sandbox_id: SandboxId,
                   path: FilePath = None, path_b64: FilePathB64 = None) -> Response:
    size, body = await ctx.transfers.download(org.org_id, sandbox_id, oid,
                                              _path(path, path_b64))
    return StreamingResponse(body, media_type="application/octet-stream",
                             headers={"Content-Length": str(size)})


@io_router.get("/v1/sandboxes/{sandbox_id}/files/list", response_model=HostFileEntries)
async def list_files(ctx: Ctx, oid: OpId, org: Org, sandbox_id: SandboxId,
                     path: FilePath = None, path_b64: FilePathB64 = None,
                     depth: Annotated[int, Query(ge=1, le=8, description=(
                         "levels to descend (1: the directory itself); deeper names are "
                         "relative paths, symlinks are not followed"))] = 1) -> HostFileEntries:
    where = _path(path, path_b64)
    if depth == 1 or "path" not in where:
        return await ctx.io.list_files(org.org_id, sandbox_id, oid, where)
    return await ctx.io.list_tree(org.org_id, sandbox_id, oid, where["path"], depth)


def _entry(result: object) -> HostFileStat:
    entry = getattr(result, "entry", None)
    if entry is None:  # a host agent that answered without one: not ours to invent
        raise RuntimeError("the host agent returned no entry")
    return entry


@io_router.get("/v1/sandboxes/{sandbox_id}/files/stat", response_model=HostFileStat)
async def stat_file(ctx: Ctx, oid: OpId, org: Org, sandbox_id: SandboxId,
                    path: FilePath = None, path_b64: FilePathB64 = None) -> HostFileStat:
    """The path itself (a final symlink is not followed); 404 if absent."""
    return _entry(await ctx.io.file_op(org.org_id, sandbox_id, oid, _path(path, path_b64),
                                       "stat"))


@io_router.post("/v1/sandboxes/{sandbox_id}/files/mkdir", status_code=201,
                response_model=HostFileStat)
async def make_dir(ctx: Ctx, oid: OpId, org: Org, sandbox_id: SandboxId,
                   path: FilePath = None, path_b64: FilePathB64 = None,
                   parents: bool = True) -> HostFileStat:
    """Creates the directory (and, with `parents`, missing parents; an existing
    directory is then fine). Without `parents`, 409 if it exists."""
    return _entry(await ctx.io.file_op(org.org_id, sandbox_id, oid, _path(path, path_b64),
                                       "mkdir", parents=parents))


@io_router.delete("/v1/sandboxes/{sandbox_id}/files", status_code=204)
async def remove_file(ctx: Ctx, oid: OpId, org: Org, sandbox_id: SandboxId,
                      path: FilePath = None, path_b64: FilePathB64 = None,
                      recursive: bool = False) -> Response:
    """A file, a symlink or an empty directory; a directory with its contents
    only with `recursive`. 404 if absent, 409 if a directory is not empty."""
    await ctx.io.file_op(org.org_id, sandbox_id, oid, _path(path, path_b64), "remove",
                         recursive=recursive)
    return Response(status_code=204)


@io_router.post("/v1/sandboxes/{sandbox_id}/files/rename", response_model=HostFileStat)
async def rename_file(ctx: Ctx, oid: OpId, org: Org, sandbox_id: SandboxId,
                      path: FilePath = None, path_b64: FilePathB64 = None,
                      to: FilePath = None, to_b64: FilePathB64 = None) -> HostFileStat:
    """Moves `path` to `to` (replacing a file there, as rename(2) does)."""
    dest = _path(to, to_b64, "to")
    return _entry(await ctx.io.file_op(org.org_id, sandbox_id, oid, _path(path, path_b64),
                                       "rename", **{"to" if "path" in dest else "to_b64":
                                                    next(iter(dest.values()))}))


"""What the envd modules share: the sandbox a request is for (by its access
token), Connect error codes, paths and entry info."""
from __future__ import annotations

import base64
import posixpath
import stat as st
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from pydantic import ValidationError

from common.rpc import RpcFailure
from contracts.rpc import HostFileStat

from ..application.errors import NotFound, TooMany, UseCaseError
from . import connect_wire as cw
from .deps import context

HOME = "/root"  # where relative paths start: Corral's default image runs as root
RPC_CODES = {"not_found": "not_found", "timeout": "deadline_exceeded",
             "invalid": "invalid_argument", "too_large": "resource_exhausted",
             "conflict": "already_exists", "unauthorized": "permission_denied",
             "busy": "resource_exhausted", "unreachable": "unavailable"}
NOT_RUNNING = "The sandbox was not found or is not running"


class Target:
    """The sandbox a request is for, authorised by its access token."""

    def __init__(self, request: Request,
                 e2b_sandbox_id: Annotated[str | None, Header(max_length=64)] = None,
                 x_access_token: Annotated[str | None, Header(max_length=200)] = None) -> None:
        ctx = context(request)
        org = (ctx.sandboxes.token_org(x_access_token, e2b_sandbox_id)
               if e2b_sandbox_id and x_access_token else None)
        if org is None:
            raise cw.ConnectError("unauthenticated", "E2b-Sandbox-Id with its X-Access-Token "
                                  "(from create or connect) is required")
        self.sandbox_id, self.org_id = e2b_sandbox_id or "", org


Sandbox = Annotated[Target, Depends(Target)]


def connect_error(e: Exception) -> cw.ConnectError:
    if isinstance(e, cw.ConnectError):
        return e
    if isinstance(e, RpcFailure):
        return cw.ConnectError(RPC_CODES.get(e.code, "unavailable"), e.detail)
    if isinstance(e, NotFound):
        return cw.ConnectError("not_found", f"{NOT_RUNNING}: {e.detail}")
    if isinstance(e, TooMany):
        return cw.ConnectError("resource_exhausted", e.detail)
    if isinstance(e, UseCaseError):
        return cw.ConnectError("failed_precondition", e.detail)
    if isinstance(e, ValidationError | ValueError):
        return cw.ConnectError("invalid_argument", str(e)[:300])
    return cw.ConnectError("internal", "internal error")


def basic_user(header: str | None) -> str | None:
    """E2B names the user to run as in `Authorization: Basic base64(user:)`."""
    if not header or not header.startswith("Basic "):
        return None
    try:
        user = base64.b64decode(header[6:], validate=True).decode().partition(":")[0]
    except (ValueError, UnicodeDecodeError):
        raise cw.ConnectError("invalid_argument", "bad Authorization header") from None
    return user or None


def sandbox_path(path: Any) -> str:
    if not isinstance(path, str) or not path or "\0" in path or len(path) > 4096:
        raise cw.ConnectError("invalid_argument", "path must be a non-empty string")
    return posixpath.normpath(posixpath.join(HOME, path))


def entry_info(path: str, e: HostFileStat | Any) -> dict[str, Any]:
    kind = (st.S_ISLNK(e.mode) and "FILE_TYPE_SYMLINK") or (
        "FILE_TYPE_DIRECTORY" if e.is_dir else "FILE_TYPE_FILE")
    out = {"name": e.name, "type": kind, "path": path, "size": str(e.size), "mode": e.mode,
           "permissions": st.filemode(e.mode), "owner": "", "group": ""}
    if getattr(e, "mtime", None):
        out["modifiedTime"] = datetime.fromtimestamp(e.mtime, UTC).isoformat().replace(
            "+00:00", "Z")
    if getattr(e, "target", None):
        out["symlinkTarget"] = e.target
    return out

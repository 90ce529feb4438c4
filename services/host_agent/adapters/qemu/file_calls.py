"""File calls on the guest agent channel (a mixin of AgentClient): put (whole,
or appended in pieces), get (whole, or a range), list, and fs operations.
Every answer is checked: sizes within what was asked, entries well formed."""
from __future__ import annotations

import base64
import binascii
import json

from guest import protocol as P
from services.host_agent.application.ports import FileEntry, FileListing, FileOp, FileStat

from .errors import GuestError

SMALL_ANSWER = 256 * 1024


class FileCalls:
    # AgentClient's, which comes first in its MRO
    async def request(self, header: dict, payload: bytes = b"", timeout: float = 30.0,
                      budget: int = SMALL_ANSWER) -> tuple[dict, bytes]:
        raise NotImplementedError

    async def put_file(self, path: str | bytes, data: bytes, mode: int = 0o644,
                       append: bool = False) -> None:
        """The whole file (atomically), or with `append` more bytes at its end."""
        field_ = _path(path)
        if len(data) > P.MAX_FILE:
            raise GuestError("EFBIG", f"file larger than {P.MAX_FILE} bytes")
        await self.request({"op": "put", **field_, "mode": mode, "append": append}, data,
                           timeout=120)

    async def get_file(self, path: str | bytes, max_bytes: int = P.MAX_FILE) -> bytes:
        field_ = _path(path)
        _, payload = await self.request({"op": "get", **field_, "max_bytes": max_bytes},
                                        timeout=120, budget=max_bytes + P.MAX_HEADER)
        if len(payload) > max_bytes:
            raise GuestError("EFBIG", "file larger than asked for")
        return payload

    async def get_range(self, path: str | bytes, offset: int, length: int
                        ) -> tuple[bytes, int]:
        """At most `length` bytes from `offset`, and the file's size."""
        length = min(length, P.MAX_FILE)
        h, payload = await self.request({"op": "get", **_path(path), "offset": offset,
                                         "max_bytes": length},
                                        timeout=120, budget=length + P.MAX_HEADER)
        total = h.get("total")
        if len(payload) > length or type(total) is not int or total < 0:
            raise GuestError("EPROTO", "a range larger than asked for, or no size")
        return payload, total

    async def list_files(self, path: str | bytes) -> FileListing:
        field_ = _path(path)
        h, payload = await self.request({"op": "list", **field_},
                                        budget=P.MAX_LIST_BYTES + P.MAX_HEADER)
        try:
            raw = json.loads(payload) if payload else h.get("entries", [])
            entries = [_entry(e) for e in raw[:P.MAX_LIST]]
        except (ValueError, TypeError, KeyError, RecursionError) as e:
            raise GuestError("EPROTO", f"unreadable listing: {e.__class__.__name__}") from None
        return FileListing(entries, bool(h.get("truncated")) or len(raw) > P.MAX_LIST)

    async def file_op(self, op: FileOp) -> FileStat | None:
        header = {"op": "fs", "action": op.action, **_path(op.path),
                  "recursive": op.recursive, "parents": op.parents}
        if op.to is not None:
            header.update({f"to_{k}": v for k, v in _path(op.to).items()})
        h, _ = await self.request(header, timeout=120 if op.action == "remove" else 30)
        e = h.get("entry")
        if e is None:
            return None
        try:
            base = _entry(e)
            kind = str(e.get("type", "other"))
            target = e.get("target")
            return FileStat(base.name, base.size, base.is_dir, base.mode, base.name_b64,
                            kind=kind if kind in ("file", "dir", "symlink") else "other",
                            mtime=float(e.get("mtime") or 0.0),
                            target=str(target)[:P.MAX_PATH] if target is not None else None)
        except (ValueError, TypeError, KeyError, AttributeError) as ex:
            raise GuestError("EPROTO", f"unreadable entry: {ex.__class__.__name__}") from None


def _path(path: str | bytes) -> dict[str, str]:
    if isinstance(path, bytes):
        P.check_path(path.decode("utf-8", "surrogateescape"))
    else:
        P.check_path(path)
    return P.path_field(path)


def _entry(e: dict) -> FileEntry:
    name_b64 = e.get("name_b64")
    if name_b64 is not None:
        try:
            base64.b64decode(str(name_b64), validate=True)
        except (binascii.Error, ValueError):
            raise GuestError("EPROTO", "bad name_b64 in a listing") from None
    return FileEntry(str(e["name"])[:4096], int(e["size"]), bool(e["is_dir"]),
                     int(e["mode"]), name_b64=str(name_b64) if name_b64 is not None else None)

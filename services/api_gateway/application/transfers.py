"""Files larger than one bus message, in pieces: an upload goes to a hidden
file beside the target, appended piece by piece and renamed over the target
at the end (readers never see half of it); a download is read range by range
as the client takes it. Each holds one of the org's `files` slots throughout."""
from __future__ import annotations

import base64
import posixpath
from collections.abc import AsyncGenerator, AsyncIterator

from contracts.rpc import HostFileGet, HostFileOp, HostFilePut

from .guest_io import GuestIO, PathArg
from .op_limits import holding

PIECE = 4 << 20  # bytes a host call carries


def _raw(path: PathArg) -> bytes:
    if "path" in path:
        return path["path"].encode("utf-8", "surrogateescape")
    return base64.b64decode(path["path_b64"])


def _ref(raw: bytes) -> dict[str, str]:
    try:
        return {"path": raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {"path_b64": base64.b64encode(raw).decode()}


async def pieces(chunks: AsyncIterator[bytes], size: int = PIECE) -> AsyncGenerator[bytes, None]:
    """`chunks` regrouped into pieces of `size` (the last one shorter)."""
    buf = bytearray()
    async for chunk in chunks:
        buf += chunk
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)


class Transfers:
    def __init__(self, io: GuestIO) -> None:
        self.io = io

    async def upload(self, org_id: str, sandbox_id: str, op_id: str, path: PathArg,
                     chunks: AsyncIterator[bytes]) -> int:
        """Writes the file; answers its size. One piece: one atomic put."""
        it = pieces(chunks).__aiter__()
        first = await anext(it, b"")
        second = await anext(it, None)
        with self.io.limits.acquire(org_id, "files"):
            host = await self.io.host_of(sandbox_id, org_id)

            async def put(ref: PathArg, data: bytes, append: bool) -> None:
                await self.io.hosts.put_file(host, HostFilePut(
                    sandbox_id=sandbox_id, org_id=org_id, op_id=op_id, **ref,
                    data_b64=base64.b64encode(data).decode(), append=append))
            if second is None:
                await put(path, first, False)
                return len(first)
            raw = _raw(path)
            tmp = _ref(posixpath.join(posixpath.dirname(raw),
                                      f".corral-upload-{op_id}".encode()))
            size = 0
            try:
                await put(tmp, first, False)
                size = len(first) + len(second)
                await put(tmp, second, True)
                async for piece in it:
                    await put(tmp, piece, True)
                    size += len(piece)
                to = _ref(raw)
                await self.io.hosts.file_op(host, HostFileOp(
                    sandbox_id=sandbox_id, org_id=org_id, op_id=op_id, action="rename", **tmp,
                    **({"to": to["path"]} if "path" in to else {"to_b64": to["path_b64"]})))
            except BaseException:
                await self._discard(host, org_id, sandbox_id, op_id, tmp)
                raise
            return size

    async def _discard(self, host: str, org_id: str, sandbox_id: str, op_id: str,
                       tmp: PathArg) -> None:
        try:
            await self.io.hosts.file_op(host, HostFileOp(
                sandbox_id=sandbox_id, org_id=org_id, op_id=op_id, action="remove", **tmp))
        except Exception:  # noqa: BLE001 - best effort: the upload's own error is what counts
            pass

    async def download(self, org_id: str, sandbox_id: str, op_id: str, path: PathArg
                       ) -> tuple[int, AsyncGenerator[bytes, None]]:
        """The file's size, and its bytes piece by piece (ending early if it
        shrinks meanwhile; never past that size)."""
        slot = self.io.limits.acquire(org_id, "files")
        try:
            host = await self.io.host_of(sandbox_id, org_id)

            async def get(offset: int) -> tuple[bytes, int]:
                out = await self.io.hosts.get_file(host, HostFileGet(
                    sandbox_id=sandbox_id, org_id=org_id, op_id=op_id, **path, offset=offset,
                    length=PIECE))
                return base64.b64decode(out.data_b64), int(out.total or 0)
            first, total = await get(0)
        except BaseException:
            slot.release()
            raise

        async def rest() -> AsyncGenerator[bytes, None]:
            data, offset = first[:total], 0
            while data:
                yield data
                offset += len(data)
                if offset >= total:
                    return
                data, _ = await get(offset)
                data = data[:total - offset]
        return total, holding(slot, rest())

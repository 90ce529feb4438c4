"""AsyncSandbox: the same operations as Sandbox, as awaitables
(`async with await AsyncSandbox.create() as sb:`)."""
from __future__ import annotations

from . import _http as h
from .errors import CorralError
from .sandbox import _SandboxBase


class AsyncSandbox(_SandboxBase):
    """Every method of Sandbox, returning a coroutine. Output callbacks of
    `exec` may be plain functions or coroutine functions."""
    _driver_cls = h.AsyncDriver

    async def close(self) -> None:
        await self._http.close()

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        try:
            await self.kill()
        except CorralError:
            if exc is None:
                raise
        finally:
            await self.close()

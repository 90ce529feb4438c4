"""Run uvicorn inside our own loop and shutdown (no signal capture of its own)."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_http(app: ASGIApp, host: str, port: int, stop: asyncio.Event,
                     started: asyncio.Event | None = None) -> None:
    server = _Server(uvicorn.Config(app, host=host, port=port, log_config=None,
                                    access_log=False, lifespan="off", timeout_keep_alive=30))
    task = asyncio.ensure_future(server.serve())
    while not server.started and not task.done():  # noqa: ASYNC110 - uvicorn sets a flag only
        await asyncio.sleep(0.02)
    if started:
        started.set()
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    await task
    stopper.cancel()

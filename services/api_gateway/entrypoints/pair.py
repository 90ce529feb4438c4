"""Two halves of one conversation (a WebSocket's two directions): run both,
and when either ends, end the other."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from fastapi import WebSocketDisconnect


async def both(up: Callable[[], Awaitable[None]], down: Callable[[], Awaitable[None]],
               log: logging.Logger, what: str) -> None:
    tasks = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if not t.cancelled() and not isinstance(t.exception(), WebSocketDisconnect | None):
                log.warning("%s ended: %r", what, t.exception())
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

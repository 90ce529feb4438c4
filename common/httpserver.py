"""Run uvicorn inside our own loop and shutdown (no signal capture of its own),
with the limits a public HTTP edge needs: request headers within a deadline
(slow clients are cut), a cap on buffered header bytes, and a concurrency
limit (503 beyond it)."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_S = 10.0  # from connect (or the last response) to complete headers
MAX_HEADER_BYTES = 128 * 1024  # h11 buffers at most this much of a request head
MAX_CONCURRENCY = 1000  # connections and requests at once; beyond: 503


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class GuardedH11(H11Protocol):
    """A request's headers must be complete within HEADER_TIMEOUT_S of the
    connection or of the previous response, however slowly they trickle in
    (uvicorn's keep-alive timer restarts with every byte)."""

    header_timeout_s = HEADER_TIMEOUT_S
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        if self.cycle is None or self.cycle.response_complete:  # still waiting for headers
            self.logger.info("closed a connection that sent no complete request in %ss",
                             self.header_timeout_s)
            self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and not self.cycle.response_complete:
            self._disarm()  # the request's head is in: the app's own deadlines apply

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


async def serve_http(app: ASGIApp, host: str, port: int, stop: asyncio.Event,
                     started: asyncio.Event | None = None,
                     max_concurrency: int = MAX_CONCURRENCY,
                     header_timeout_s: float = HEADER_TIMEOUT_S) -> None:
    protocol = type("H11", (GuardedH11,), {"header_timeout_s": header_timeout_s})
    server = _Server(uvicorn.Config(app, host=host, port=port, log_config=None,
                                    access_log=False, lifespan="off", timeout_keep_alive=30,
                                    http=protocol, ws="wsproto", ws_max_size=1 << 20,
                                    limit_concurrency=max_concurrency,
                                    h11_max_incomplete_event_size=MAX_HEADER_BYTES))
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

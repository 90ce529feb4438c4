"""Process lifecycle shared by every service: signals, tasks, health."""
from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from .logging import configure_logging
from .metrics import CONTENT_TYPE, exposition
from .settings import CommonSettings
from .tracing import instrument_clients, setup_tracing

log = logging.getLogger("corral.service")


class ServiceContext(Protocol):
    """What every service's bootstrap returns: its wired dependencies."""

    async def close(self) -> None: ...


S = TypeVar("S", bound=CommonSettings)
C = TypeVar("C", bound=ServiceContext)
Jobs = Callable[[C, asyncio.Event], list[Awaitable[None]]]
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def warn_if_plaintext(what: str, host: str, tls: bool = False) -> bool:
    """LESSONS: plaintext beyond loopback is a logged warning, never silent."""
    if tls or host in LOOPBACK or host.startswith("127."):
        return False
    log.warning("%s listens on %s without TLS: traffic and credentials travel in "
                "plaintext; put it behind a TLS-terminating proxy or a private network",
                what, host)
    return True


def install_stop_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def run_until_stopped(stop: asyncio.Event, *jobs: Awaitable[None],
                            on_stop: Callable[[], Awaitable[None]] | None = None) -> None:
    """Run jobs until `stop` is set or one of them crashes; then shut down cleanly.
    A job that returns normally (a one-off start-up task) is simply done."""
    tasks: list[asyncio.Future[object]] = [asyncio.ensure_future(j) for j in jobs]
    stopper: asyncio.Future[object] = asyncio.ensure_future(stop.wait())
    pending = set(tasks)
    crashed: list[asyncio.Future[object]] = []
    while not crashed and not stopper.done() and pending:
        done, _ = await asyncio.wait(pending | {stopper}, return_when=asyncio.FIRST_COMPLETED)
        pending -= done
        crashed = [t for t in done if t is not stopper and not t.cancelled() and t.exception()]
    if not pending and not crashed and not stopper.done():
        await stopper  # every job finished on its own: wait for the signal
    for t in crashed:
        log.error("job crashed: %r", t.exception(), exc_info=t.exception())
    stop.set()
    try:
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    except TimeoutError:
        for t in tasks:
            t.cancel()
    if on_stop:
        await on_stop()
    stopper.cancel()
    if crashed:
        raise SystemExit(1)


async def serve_health(port: int, ready: Callable[[], Awaitable[bool]],
                       stop: asyncio.Event, host: str = "127.0.0.1") -> None:
    """/healthz, /readyz and the Prometheus /metrics, on their own port."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = (await asyncio.wait_for(reader.readline(), 5)).decode("latin-1")
            path = line.split(" ")[1] if line.count(" ") >= 2 else "/"
            ctype = "application/json"
            if path == "/healthz":
                code, body = 200, b'{"status":"ok"}'
            elif path == "/metrics":
                code, body, ctype = 200, exposition(), CONTENT_TYPE
            elif path == "/readyz":
                ok = await ready()
                code, body = ((200, b'{"status":"ready"}') if ok
                              else (503, b'{"status":"not ready"}'))
            else:
                code, body = 404, b'{"status":"not found"}'
            writer.write(f"HTTP/1.1 {code} X\r\ncontent-type: {ctype}\r\n"
                         f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                         + body)
            await writer.drain()
        except Exception:  # noqa: BLE001 - a bad probe must not hurt the service
            pass
        finally:
            writer.close()

    if not port:
        await stop.wait()
        return
    warn_if_plaintext("health endpoint", host)
    server = await asyncio.start_server(handle, host, port)
    async with server:
        await stop.wait()


async def serve(ctx: C, jobs: Jobs[C], stop: asyncio.Event,
                started: asyncio.Event | None = None) -> None:
    """Run a bootstrapped service's jobs until `stop`, then close it."""
    if started is not None:
        started.set()
    await run_until_stopped(stop, *jobs(ctx, stop), on_stop=ctx.close)


async def run(service: str, settings: S,
              bootstrap: Callable[[S, asyncio.Event], Awaitable[C]], jobs: Jobs[C],
              startup: Callable[[C], Awaitable[None]] | None = None) -> None:
    """A service process: JSON logs, tracing, signals, bootstrap, `startup`
    (before any job runs), then the jobs until SIGTERM/SIGINT."""
    configure_logging(service, settings.log_level)
    setup_tracing(service)
    instrument_clients()
    stop = asyncio.Event()
    install_stop_handlers(stop)
    ctx = await bootstrap(settings, stop)
    if startup is not None:
        await startup(ctx)
    log.info("%s started", service)
    await serve(ctx, jobs, stop)
    log.info("%s stopped", service)

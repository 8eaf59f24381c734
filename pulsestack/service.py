"""Running a service: uvloop, JSON logs, NATS connection, a stop event set by SIGTERM/SIGINT, and the
`Lifecycle` every service's `serve()` lives in."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import signal
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any

import nats
import uvloop
from nats.aio.client import Client as NATS

from pulsestack import allocator, ops
from pulsestack.config import CommonConfig
from pulsestack.logs import configure, get_logger

log = get_logger(__name__)


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT: services finish their in-flight work, then return."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Waits `seconds`, less when `stop` is set meanwhile, so a service's periodic loop ends at once on a
    stop; True when the service is stopping."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
    return stop.is_set()


def inbox_prefix(user: str | None) -> str:
    """Where a service's replies and deliveries come: `_INBOX_<user>`, the only inboxes its NATS user may
    subscribe to (deploy/nats/nats-server.conf), so no service reads another's."""
    return f"_INBOX_{user}" if user else "_INBOX"


async def connect_nats(config: CommonConfig, name: str) -> NATS:
    if config.clock.compressed:
        log.warning("PULSESTACK_TEST_CLOCK is set: device times and months are judged by a test clock",
                    clock_now=config.clock.now(), rate=config.clock.rate)
    async def disconnected() -> None:
        log.warning("nats disconnected")

    async def reconnected() -> None:
        log.info("nats reconnected")

    async def error(exc: Exception) -> None:
        log.warning("nats error", error=str(exc))

    return await nats.connect(
        config.nats_servers,
        name=name,
        user=config.nats_user,
        password=config.nats_password,
        tls=config.nats_tls,
        tls_hostname=config.nats_tls_hostname,
        inbox_prefix=inbox_prefix(config.nats_user),
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        disconnected_cb=disconnected,
        reconnected_cb=reconnected,
        error_cb=error,
        # Keep publishing into the client's buffer through a short outage; PubAck timeouts bound the wait.
        pending_size=8 * 1024 * 1024,
    )


async def close_nats(nc: NATS) -> None:
    """Drains the connection (what was received is handled, what was published is flushed), or, when the
    server is already gone (`make run`'s Ctrl-C reaches it with everything else), just closes it: there is
    nothing left to flush to, and a stop is not an error."""
    try:
        await nc.drain()
    except (nats.errors.ConnectionReconnectingError, nats.errors.ConnectionClosedError) as exc:
        log.info("nats unavailable at stop; connection closed without draining", error=type(exc).__name__)
        await nc.close()


class Lifecycle:
    """One service's life: connect (each part registers how it closes as it opens), ready (the ops
    endpoints answer /readyz from the service's own check), run until stop, then drain and close in the
    reverse order of opening, whether the service stopped or failed. A service whose drain must close two
    parts in an order of its own registers one callback that does both."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._closing = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Lifecycle:
        await self._closing.__aenter__()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        try:
            return await self._closing.__aexit__(kind, exc, tb)
        finally:
            log.info(f"{self.service} stopped")

    def on_close(self, close: Callable[[], object]) -> None:
        """`close` (a function or a coroutine function) runs on the way out, before what opened earlier."""
        async def call() -> None:
            result = close()
            if inspect.isawaitable(result):
                await result

        self._closing.push_async_callback(call)

    async def nats(self, config: CommonConfig) -> NATS:
        nc = await connect_nats(config, config.service)
        self.on_close(lambda: close_nats(nc))
        return nc

    def beside(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Work that runs beside the service (a periodic report, a watch), cancelled on the way out."""
        task = asyncio.create_task(work)

        async def cancel() -> None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        self.on_close(cancel)
        return task

    async def ops(self, host: str, port: int, ready: ops.ReadyCheck) -> None:
        """The ops endpoints (/metrics, /healthz, /readyz) of a service without an HTTP server of its own."""
        runner = await ops.serve(host, port, ready)
        self.on_close(runner.cleanup)

    def started(self, **fields: object) -> None:
        log.info(f"{self.service} started", **fields)


def run(service: str, main: Callable[[asyncio.Event], Awaitable[None]], log_level: str = "info") -> None:
    """Entry point of every service process."""
    configure(service, log_level)
    if not allocator.in_use():
        log.warning("not running on jemalloc: resident memory may creep after bursts (pulsestack/allocator.py)")
    async def runner() -> None:
        await main(stop_on_signals())

    uvloop.run(runner())

"""Serving HTTP to clients we do not trust: read deadlines, a connection bound, one-line client errors.

aiohttp's server has a keep-alive timeout but no deadline for a request's headers or body: a client that
trickles its headers, or sends none, held its socket for an hour (the default keep-alive), and a few
thousand such clients used up the process's open files while good callbacks were reset. Every HTTP
service that faces clients (ingest-http, the read API) serves through `serve_app`:

- a request's headers must arrive within `read_timeout` of its first byte (of the connection, for the
  first request), or the connection is answered 408 and closed;
- a handler reading a body bounds the read with `read_body` (the same deadline);
- past `max_connections` open connections, a new one is answered 503 with Retry-After and closed;
- an idle keep-alive connection closes after `keepalive_timeout`;
- aiohttp's report of a malformed request (bad Content-Length, garbage) is one log line, not a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from pulsestack import metrics
from pulsestack.config import env_float, env_int

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RETRY_AFTER = "5"


def _plain_response(status: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"{extra}Connection: close\r\n\r\n"
    ).encode() + body


# Written straight to the socket: no request was parsed, so no handler or middleware can answer.
TIMED_OUT = _plain_response("408 Request Timeout", b'{"error":"timeout","detail":"request not received in time"}')
OVERLOADED = _plain_response(
    "503 Service Unavailable", b'{"error":"overloaded","detail":"too many connections"}',
    f"Retry-After: {RETRY_AFTER}\r\n",
)


@dataclass(frozen=True, slots=True)
class HttpLimits:
    read_timeout: float  # seconds for a request's headers, and for its body where a handler reads one
    keepalive_timeout: float  # seconds an idle connection stays open between requests
    max_connections: int

    @classmethod
    def from_env(cls) -> HttpLimits:
        return cls(
            read_timeout=env_float("PULSESTACK_HTTP_READ_TIMEOUT", 5.0),
            # Longer than Traefik's 90 s idle time for its pooled backend connections: the proxy, not us,
            # closes an idle connection, so it never sends a request on one we are closing.
            keepalive_timeout=env_float("PULSESTACK_HTTP_KEEPALIVE_TIMEOUT", 100.0),
            max_connections=env_int("PULSESTACK_HTTP_MAX_CONNECTIONS", 10_000),
        )


class _Connections:
    """The open connections of one listening socket, and which of them are inside a request's handler."""

    def __init__(self, service: str, limits: HttpLimits) -> None:
        self.service = service
        self.limits = limits
        self.open = 0
        self.by_transport: dict[asyncio.BaseTransport, _GuardedConnection] = {}


class _GuardedConnection(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind a deadline for each request's headers.

    The deadline is armed by the first bytes of a request (or by the connection itself) and disarmed when
    the request reaches the application (the middleware of `serve_app` says so), so only the time a client
    takes to send headers counts, never the time a handler takes to answer.
    """

    def __init__(self, inner: RequestHandler, connections: _Connections) -> None:
        self._inner = inner
        self._connections = connections
        self._transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._in_handler = False
        self._admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes
        self._transport = transport
        connections = self._connections
        if connections.open >= connections.limits.max_connections:
            metrics.http_connections_refused.labels(connections.service, "too_many").inc()
            transport.write(OVERLOADED)
            transport.close()
            return
        self._admitted = True
        connections.open += 1
        connections.by_transport[transport] = self
        metrics.http_connections_open.labels(connections.service).set(connections.open)
        self._inner.connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if not self._admitted:
            return
        connections = self._connections
        connections.open -= 1
        if self._transport is not None:
            connections.by_transport.pop(self._transport, None)
        metrics.http_connections_open.labels(connections.service).set(connections.open)
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        if not self._in_handler and self._deadline is None:
            self._arm()  # the first bytes of the next request on a kept-alive connection
        self._inner.data_received(data)

    def eof_received(self) -> None:
        if self._admitted:
            self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def entered_handler(self) -> None:
        self._in_handler = True
        self._disarm()

    def left_handler(self) -> None:
        self._in_handler = False

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self._connections.limits.read_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        metrics.http_connections_refused.labels(self._connections.service, "header_timeout").inc()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(TIMED_OUT)
            self._transport.close()


class GuardedSite(web.BaseSite):
    """A TCP site whose connections go through `_GuardedConnection`."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, connections: _Connections,
                 backlog: int = 1024) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._connections = connections

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        connections = self._connections
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _GuardedConnection(server(), connections), self._host, self._port,
            backlog=self._backlog, reuse_address=True,
        )


def _middleware(connections: _Connections) -> Middleware:
    @web.middleware
    async def guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
        connection = connections.by_transport.get(request.transport) if request.transport else None
        if connection is not None:
            connection.entered_handler()
        try:
            return await handler(request)
        finally:
            if connection is not None:
                connection.left_handler()

    return guarded


class BodyTimeout(Exception):
    """The client did not send the body it announced within the read deadline."""


class BodyIncomplete(Exception):
    """The client closed the connection, or ended the body, before the length it announced."""


async def read_body(request: web.Request, limit: int) -> bytes:
    """At most `limit` + 1 bytes of the body (so the caller can tell "too large"), within the read deadline."""
    connections = request.app[CONNECTIONS]
    content = request.content
    length = request.content_length
    read = content.readexactly(length) if length is not None else content.read(limit + 1)
    try:
        if content.is_eof():
            # The whole body is here already (usually it comes with the headers), so the read cannot wait:
            # no deadline to arm, whose timer was a measurable share of an ingested callback's time.
            return await read
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for runs the read as a task of its own.
        async with asyncio.timeout(connections.limits.read_timeout):
            return await read
    except TimeoutError as exc:
        metrics.http_connections_refused.labels(connections.service, "body_timeout").inc()
        raise BodyTimeout from exc
    except (asyncio.IncompleteReadError, ConnectionError, RequestPayloadError) as exc:
        raise BodyIncomplete(str(exc) or type(exc).__name__) from exc


class _ClientErrorsOnOneLine(logging.Filter):
    """A malformed request is the client's mistake: its reason, without our stack."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = f"{record.getMessage()}: {exc.code} {exc.message}".replace("\n", " ")
            record.args = ()
            record.exc_info = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


CONNECTIONS = web.AppKey("pulsestack_http_connections", _Connections)


def raise_open_files_limit(wanted: int) -> None:
    """Each connection is a file: lift the soft limit toward the hard one (as nginx's worker_rlimit_nofile)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def serve_app(app: web.Application, service: str, host: str, port: int, limits: HttpLimits,
                    shutdown_timeout: float = 10.0) -> web.AppRunner:
    """Starts `app` on host:port behind the limits; `await runner.cleanup()` stops it gracefully."""
    connections = _Connections(service, limits)
    metrics.http_connections_open.labels(service).set(0)
    for reason in ("too_many", "header_timeout", "body_timeout"):
        metrics.http_connections_refused.labels(service, reason)
    app.middlewares.insert(0, _middleware(connections))
    app[CONNECTIONS] = connections
    logging.getLogger("aiohttp.server").addFilter(_ClientErrorsOnOneLine())
    # A connection, its file, and room for the process's own files (NATS, database, logs).
    raise_open_files_limit(limits.max_connections + 1024)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=limits.keepalive_timeout,
                           shutdown_timeout=shutdown_timeout)
    await runner.setup()
    await GuardedSite(runner, host, port, connections).start()
    return runner

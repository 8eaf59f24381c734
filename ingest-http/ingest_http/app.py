"""An ingest-http process: the callback routes (routes.py) and the ops endpoints on one port."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from ingest_http.config import HttpIngestConfig
from ingest_http.handler import Callbacks, json_response
from ingest_http.routes import ROUTES
from pulsestack import metrics, ops
from pulsestack.http import serve_app
from pulsestack.ingest import IngestBus
from pulsestack.service import Lifecycle
from pulsestack.tokens import Tokens

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_PROTOCOL_OF_PATH = {route.path: route.protocol for route in ROUTES}


@web.middleware
async def count_wrong_methods(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed:
        protocol = _PROTOCOL_OF_PATH.get(request.path)
        if protocol is not None:
            metrics.ingest_received.labels(protocol).inc()
            metrics.ingest_rejected.labels(protocol, "malformed").inc()
        return json_response({"error": "method_not_allowed", "detail": "POST expected"}, 405, {"Allow": "POST"})


async def serve(config: HttpIngestConfig, stop: asyncio.Event) -> None:
    async with Lifecycle(config.common.service) as life:
        protocols = sorted({route.protocol for route in ROUTES})
        bus = await IngestBus.connect(config.common, protocols, config.group_max_readings, config.group_max_delay)
        life.on_close(bus.close)
        tokens = {realm: Tokens(path, inline, name=realm) for realm, (path, inline) in config.tokens.items()}
        # The handler reads the body itself and answers 413 with a reason; this is only a backstop.
        app = web.Application(middlewares=[count_wrong_methods], client_max_size=64 * 1024)
        for route in ROUTES:
            callbacks = Callbacks(
                route=route, tokens=tokens[route.realm], membership=bus.membership, grouper=bus.grouper,
                quarantine=bus.quarantine, max_age_seconds=config.max_age_seconds, clock=config.common.clock,
                answer_within=config.answer_within,
            )
            app.router.add_post(route.path, callbacks.handle)
        ops.add_routes(app, bus.ready)
        # Closed first: stop accepting, let in-flight callbacks get their PubAcks and answers, then the bus.
        runner = await serve_app(app, "ingest-http", config.host, config.port, config.http,
                                 shutdown_timeout=config.answer_within + 1)
        life.on_close(runner.cleanup)
        bus.follow_registry(stop)
        life.started(port=config.port, routes=[route.path for route in ROUTES])
        await asyncio.gather(*(each.keep_reloading(stop) for each in tokens.values()))

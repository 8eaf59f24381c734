"""An api process: the read API and the ops endpoints on one port."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from api.config import ApiConfig
from api.handlers import ReadApi, error
from pulsestack import ops
from pulsestack.http import serve_app
from pulsestack.service import Lifecycle
from pulsestack.store.db import create_pool
from pulsestack.tokens import Tokens

PUBLIC = frozenset({"/openapi.json", "/v1/openapi.json", "/docs", "/healthz", "/readyz", "/metrics"})


def token_required(tokens: Tokens) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in PUBLIC and not tokens.valid(request.headers.get("Authorization")):
            response = error(401, "unauthorized", "a valid bearer token is required")
            response.headers["WWW-Authenticate"] = 'Bearer realm="pulsestack"'
            return response
        return await handler(request)

    return middleware


async def serve(config: ApiConfig, stop: asyncio.Event) -> None:
    async with Lifecycle(config.common.service) as life:
        pool = await create_pool(config.database_url, size=4)
        life.on_close(pool.close)
        export_pool = await create_pool(config.database_url, size=2)
        life.on_close(export_pool.close)
        tokens = Tokens(config.tokens_file, config.tokens_inline, name="api")
        app = web.Application(middlewares=[token_required(tokens)])
        ReadApi(pool, export_pool, config.max_points).routes(app)

        async def ready() -> str | None:
            try:
                await asyncio.wait_for(pool.fetchval("SELECT 1"), 2.0)
            except Exception as exc:
                return f"database: {exc}"
            return None

        ops.add_routes(app, ready)
        runner = await serve_app(app, "api", config.host, config.port, config.http)
        life.on_close(runner.cleanup)
        life.started(port=config.port)
        await tokens.keep_reloading(stop)

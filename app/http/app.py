"""The ASGI application factory, ``create_app(settings)``; app/main.py makes ``app.main:app``.

Request path: http/routes.py (validate) -> service.py / reads.py (one transaction)
-> store/ (SQL, one module per thing stored) -> store/tables.py, on the engine of
store/engine.py; the algorithm in bandit/ is pure.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import Settings, deprecated_settings, get_settings
from app.dashboard.routes import dashboard
from app.http.auth import install_openapi_security
from app.http.docs_ui import docs, install_static
from app.http.error_handlers import install_error_handlers
from app.http.observe import ObserveRequests
from app.http.routes import health, read, zeus
from app.http.schema_gate import RequireSchema, SchemaGate, log_schema_at_startup
from app.store.engine import create_engine
from app.sweeper import sweeping
from app.telemetry.log import configure_logging
from app.telemetry.otel import fastapi_telemetry
from app.tokens import TokenVerifier

logger = logging.getLogger(__name__)

DESCRIPTION = """
A drop-in, wire-compatible replacement for the Zeus batch size optimizer server
(Zeus, NSDI'23). Recurring training jobs ask it which batch size to use, report
cumulative time, energy and validation metric every epoch, and it learns the
batch size with the lowest energy-time cost: a pruning exploration of batch
sizes, then Gaussian Thompson Sampling.

Errors are JSON `{"message": ...}`; 422 also carries FastAPI's `detail` list.
Infinite precisions are shown as `null`.

With `BSO_AUTH=required`, every operation but the probes needs a token from
`bso tokens create`: `Authorization: Bearer <token>`, or HTTP Basic with any
user name and the token as the password. Viewers may read, trainers also
train the jobs of their prefixes, admins may do everything.
"""


class BodySizeLimit:
    """Refuse request bodies over a limit with 413, before anything parses them.

    The body is read up front (bodies here are a few hundred bytes), so a
    chunked upload without Content-Length is measured too.
    """

    def __init__(self, app: ASGIApp, default_max_bytes: int = 65_536) -> None:
        self.app = app
        self.default_max_bytes = default_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        settings = getattr(scope["app"].state, "settings", None) if "app" in scope else None
        max_bytes = settings.max_body_bytes if settings else self.default_max_bytes
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None:
            # The server delivers exactly Content-Length bytes: check the header.
            if not declared.isdigit() or int(declared) > max_bytes:
                await _refuse(send, max_bytes)
                return
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > max_bytes:
                await _refuse(send, max_bytes)
                return
            if not message.get("more_body", False):
                break
        replay = iter(messages)

        async def buffered_receive() -> Message:
            return next(replay, None) or await receive()

        await self.app(scope, buffered_receive, send)


async def _refuse(send: Send, max_bytes: int) -> None:
    body = b'{"message":"Request body too large (limit %d bytes)."}' % max_bytes
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BsoApp(FastAPI):
    """FastAPI with ``ObserveRequests`` around everything, Starlette's error middleware too.

    ``add_middleware`` would put it inside that middleware, where the 500 and
    503 answers of the catch-all error handler are never seen.
    """

    def build_middleware_stack(self) -> ASGIApp:
        return ObserveRequests(super().build_middleware_stack())


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; settings are read from the environment when not given."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        resolved = settings or get_settings()
        configure_logging(resolved.log_level, resolved.log_format)
        for warning in deprecated_settings(os.environ):
            logger.warning("%s", warning)
        engine = create_engine(resolved)
        if resolved.is_in_memory:
            # Nobody else can reach this database to migrate it.
            from app.store.migrate import upgrade_in_place

            await upgrade_in_place(engine)
        app.state.settings = resolved
        app.state.engine = engine
        app.state.schema = SchemaGate(engine)
        await log_schema_at_startup(app.state.schema)
        # Per process: each replica trusts a checked token for auth_cache_s.
        app.state.tokens = TokenVerifier(resolved.auth_cache_s)
        try:
            async with sweeping(engine, resolved.lease):
                yield
        finally:
            await engine.dispose()

    app = BsoApp(
        # Off unless OpenTelemetry is set up (app/telemetry/otel.py).
        telemetry=fastapi_telemetry(),
        title="Batch Size Optimizer",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        # Zeus's client posts JSON without a Content-Type header.
        strict_content_type=False,
        # Served from the package by app/http/docs_ui.py (FastAPI's load from a CDN).
        docs_url=None,
        redoc_url=None,
        # The routers' routes on the app's own router, not include_router():
        # FastAPI 0.165 matches an included router's routes twice and walks
        # every router's routes on every request, some 117k instructions
        # (about a fifth of the HTTP stack's) per request (docs/benchmarks.md,
        # issue 24). Each route already holds its router's tags, dependencies
        # and responses, added when it was declared.
        routes=[*zeus.routes, *read.routes, *health.routes, *docs.routes, *dashboard.routes],
    )
    install_static(app)
    install_error_handlers(app)
    install_openapi_security(app)
    app.add_middleware(RequireSchema)
    app.add_middleware(BodySizeLimit)
    return app

"""The outermost middleware: request ids, request metrics and the one line per request.

Pure ASGI (no BaseHTTPMiddleware: no extra task, no body buffering), and
placed outside Starlette's error middleware (see ``BsoApp`` in app/main.py),
so that it sees the status of every answer, the 500s and the database 503s
rendered by the catch-all handler included, and stamps them with
``X-Request-ID`` too.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from fastapi.routing import iter_route_contexts
from starlette.routing import Mount, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.telemetry import metrics
from app.telemetry.context import RequestInfo, enter, leave, request_id_from

access_logger = logging.getLogger("app.access")

UNMATCHED = "unmatched"  # the route label of every path that no route serves
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ObserveRequests:
    """Give each HTTP request an id, count and time it, and log it once when answered."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._routes: list[tuple[re.Pattern[str], str]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        info = RequestInfo(request_id_from(scope["headers"]), scope)
        header = (b"x-request-id", info.request_id.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                info.status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = enter(info)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            # Also when the app raised: the error middleware has answered by then.
            seconds = time.perf_counter() - started
            status = info.status or 500
            method = scope["method"]
            route = self.route_of(scope)
            metrics.request_observed(method if method in _METHODS else "other", route, status,
                                     seconds)  # fmt: skip
            if access_logger.isEnabledFor(logging.INFO):
                _log_request(scope, route, status, seconds)
            leave(token)

    def route_of(self, scope: Scope) -> str:
        """The template of the route that served the request, e.g. "/jobs/{job_id}"."""
        path = getattr(scope.get("route"), "path", None)
        if isinstance(path, str):
            return path
        # No route in the scope: answered before routing (413), a plain Starlette
        # route (/docs, /openapi.json), a mount, or no route at all (404).
        if self._routes is None:  # once: every route is added before the app serves
            self._routes = _route_table(scope["app"].routes)
        requested = scope["path"]
        return next((t for regex, t in self._routes if regex.match(requested)), UNMATCHED)


def _route_table(routes: list[Any]) -> list[tuple[re.Pattern[str], str]]:
    """Each route's template with a regex for its paths, in routing order."""
    table = []
    for context in iter_route_contexts(routes):
        template = context.path
        if template is None:
            continue
        if isinstance(context.original_route, Mount):
            regex = re.compile("^" + re.escape(template.rstrip("/")) + "(/.*)?$")
        else:
            regex = compile_path(template)[0]
        table.append((regex, template))
    return table


def _log_request(scope: Scope, route: str, status: int, seconds: float) -> None:
    method = str(scope["method"])[:16]
    path = scope["path"]
    query = scope.get("query_string", b"")
    if query:
        path = f"{path}?{query.decode('latin-1')}"
    milliseconds = round(seconds * 1000, 3)
    access_logger.info(
        "%s %s %d %.3fms",
        method,
        path[:2048],
        status,
        milliseconds,
        extra={"method": method, "route": route, "status": status, "duration_ms": milliseconds},
    )

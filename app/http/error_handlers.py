"""The one place where exceptions become HTTP responses.

Every error body is ``{"message": ...}`` as Zeus's clients expect. Nothing a
client sends produces a 5xx: unexpected failures are logged with their
traceback and answered with a generic 500 that leaks no SQL or stack.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.errors import DomainError
from app.http.schema_gate import RETRY_AFTER_S, SchemaGate
from app.store.engine import DATABASE_ERRORS, DatabaseFault, classify, is_missing_schema
from app.telemetry import metrics

logger = logging.getLogger(__name__)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


def _describe(error: Any) -> str:
    if error.get("type") == "model_attributes_type" and tuple(error.get("loc", ())) == ("body",):
        return "body: expected a JSON object (send it with Content-Type: application/json)"
    return f"{_field(error.get('loc', ()))}: {error.get('msg', 'invalid')}"


def validation_message(errors: list[Any]) -> str:
    """One line naming every invalid field, e.g. 'time: Input should be ...'."""
    return "; ".join(_describe(e) for e in errors)


UNREADABLE_BODY = "body: not readable as JSON text (send UTF-8 encoded JSON)"


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> str:
    """Every method some route serves at the request's path, for a 405's ``Allow``.

    Starlette names only the methods of the first route whose path matches,
    but each FastAPI route serves one method: ``/jobs`` has POST, GET and
    DELETE. So ask the router, method by method.
    """
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in _METHODS
        if any(r.matches({**request.scope, "method": method})[0] is Match.FULL for r in routes)
    )


_FAULT_MESSAGES = {
    DatabaseFault.BUSY: "The job is busy with another request; retry shortly.",
    DatabaseFault.UNAVAILABLE: "The database is unavailable; retry shortly.",
}


def install_error_handlers(app: FastAPI) -> None:
    """Register the one place where exceptions become HTTP responses."""

    @app.exception_handler(DomainError)
    async def _domain(_: Request, exc: DomainError) -> JSONResponse:
        headers = {"Retry-After": "1"} if exc.status_code == 503 else None
        response = JSONResponse({"message": exc.message}, exc.status_code, headers=headers)
        for name, value in exc.headers:
            response.headers.append(name, value)
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        # Echo loc/msg/type only: inputs may hold NaN or huge values that are
        # not valid JSON, and ctx may hold exception objects.
        detail = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in errors
        ]
        return JSONResponse({"message": validation_message(errors), "detail": detail}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI could not decode the body (not UTF-8, say): invalid input like
            # any other malformed JSON, answered with the documented 422.
            detail = [{"loc": ["body"], "msg": UNREADABLE_BODY, "type": "json_invalid"}]
            return JSONResponse({"message": UNREADABLE_BODY, "detail": detail}, 422)
        if exc.status_code == 405:
            return JSONResponse(
                {"message": str(exc.detail)}, 405, headers={"Allow": allowed_methods(request)}
            )
        return JSONResponse(
            {"message": str(exc.detail)}, exc.status_code, headers=getattr(exc, "headers", None)
        )

    async def _database(request: Request, exc: Exception) -> JSONResponse:
        fault = classify(exc)
        if fault is None:
            if is_missing_schema(exc):
                return await _missing_schema(request, exc)
            return _internal_error(request, exc)
        metrics.database_error(fault.value)
        if fault is DatabaseFault.UNAVAILABLE:
            logger.error("database unavailable on %s %s: %r", request.method, request.url.path,
                         exc)  # fmt: skip
        return JSONResponse({"message": _FAULT_MESSAGES[fault]}, 503, headers={"Retry-After": "1"})

    # Not the catch-all below: Starlette re-raises what that one handles.
    for error in DATABASE_ERRORS:
        app.add_exception_handler(error, _database)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _internal_error(request, exc)


async def _missing_schema(request: Request, exc: Exception) -> JSONResponse:
    """A table or column is missing: 503 if the schema is behind now, else a bug (500).

    The schema served when this process last read it; someone downgraded or
    replaced the database since. The gate reads it again, for this request
    and the ones after (app/http/schema_gate.py).
    """
    gate: SchemaGate | None = getattr(request.app.state, "schema", None)
    if gate is None:
        return _internal_error(request, exc)
    gate.forget()
    if await gate.recheck():
        return _internal_error(request, exc)
    if gate.unreachable:  # gone meanwhile: an outage like any other
        message = _FAULT_MESSAGES[DatabaseFault.UNAVAILABLE]
        return JSONResponse({"message": message}, 503, headers={"Retry-After": "1"})
    logger.warning("%s %s: %s", request.method, request.url.path, gate.message())
    headers = {"Retry-After": str(RETRY_AFTER_S)}
    return JSONResponse({"message": gate.message()}, 503, headers=headers)


def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"message": "Internal server error."}, 500)

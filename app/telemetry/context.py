"""What the current request is: its id and, once known, its job, for every log line.

A context variable holds one mutable ``RequestInfo`` per request, set by the
middleware in app/http/observe.py. Code below it (routes, use cases) only adds to
that object, so what it adds is seen even from a copied context (a task or a
thread started inside the request). Standard library only: app/telemetry/log.py reads it
and must not import prometheus-client (see app/telemetry/metrics.py).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import MutableMapping
from contextvars import ContextVar, Token
from typing import Any
from urllib.parse import parse_qs

# What we accept from a client's X-Request-ID: short, and safe in any log or header.
_SANE_ID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")
MAX_LOGGED_JOB_ID = 256  # the longest valid job_id; longer junk is cut in logs


class RequestInfo:
    """One request's id and what routes and use cases learn about it."""

    __slots__ = ("_job_id", "request_id", "scope", "status")

    def __init__(self, request_id: str, scope: MutableMapping[str, Any]) -> None:
        self.request_id = request_id
        self.scope = scope
        self.status: int | None = None
        self._job_id: str | None = None

    @property
    def job_id(self) -> str | None:
        """The job this request is about: bound by a route, else its path or query."""
        if self._job_id is None:
            found = self.scope.get("path_params", {}).get("job_id") or _query_job_id(self.scope)
            if isinstance(found, str):
                self._job_id = found[:MAX_LOGGED_JOB_ID]
        return self._job_id

    @job_id.setter
    def job_id(self, value: str) -> None:
        self._job_id = value[:MAX_LOGGED_JOB_ID]


_current: ContextVar[RequestInfo | None] = ContextVar("bso_request", default=None)


def current_request() -> RequestInfo | None:
    """The request being served in this context, if any."""
    return _current.get()


def bind_job(job_id: str | None) -> None:
    """Name the job of the current request (one from a JSON body: the middleware can't see it)."""
    info = _current.get()
    if info is not None and job_id is not None:
        info.job_id = job_id


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-ID when it is sane, else a new random one."""
    for name, value in headers:
        if name == b"x-request-id":
            if _SANE_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return secrets.token_hex(16)


def _query_job_id(scope: MutableMapping[str, Any]) -> str | None:
    query: bytes = scope.get("query_string", b"")
    if b"job_id=" not in query:
        return None
    values = parse_qs(query.decode("latin-1")).get("job_id")
    return values[0] if values else None


def enter(info: RequestInfo) -> Token[RequestInfo | None]:
    """Make ``info`` the current request; returns the token for ``leave``."""
    return _current.set(info)


def leave(token: Token[RequestInfo | None]) -> None:
    _current.reset(token)

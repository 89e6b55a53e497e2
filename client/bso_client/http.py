"""Talking to the server: timeouts, retries with backoff, errors with the server's message.

What may be retried follows docs/SPEC.md: a 503 means the request's
transaction was rolled back, and a refused connection never reached the
server, so both are retried for every call. Anything else that leaves the
outcome unknown (a read timeout, a 502/504, a dropped connection) is retried
only for idempotent calls: registering a named job, reporting, ending, and a
dispatch (GET /jobs/batch_size), which carries an ``Idempotency-Key`` that its
retries repeat, so that the server answers them with the trial it made.

The decisions are plain functions; ``SyncTransport`` and ``AsyncTransport``
are the two loops around them.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from bso_client import rules
from bso_client.errors import BSORejectedError, BSOUnavailableError

USER_AGENT = "bso-client/0.1.0"


@dataclass(frozen=True)
class Retry:
    """How often and how patiently a call is retried.

    ``attempts`` counts every try (1: no retry). The n-th wait is
    ``backoff * 2**n`` capped at ``max_backoff``, with jitter; a 503's
    ``Retry-After`` replaces it, capped at ``max_retry_after``.
    """

    attempts: int = 4
    backoff: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"Retry.attempts must be at least 1, not {self.attempts}")
        if min(self.backoff, self.max_backoff, self.max_retry_after) < 0:
            raise ValueError("Retry's waits must not be negative")

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after failed try number ``attempt`` (0-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        ceiling = min(self.backoff * 2**attempt, self.max_backoff)
        return float(ceiling / 2 + random.uniform(0, ceiling / 2))


NO_RETRY = Retry(attempts=1)


@dataclass(frozen=True)
class Call:
    """One API call: where, what, and whether repeating it is harmless."""

    method: str
    path: str
    json: Mapping[str, Any] | None = None
    params: Mapping[str, str] | None = None
    idempotent: bool = True
    headers: Mapping[str, str] | None = None  # besides the transport's own
    request_id: str = field(default_factory=lambda: f"bso-client-{uuid.uuid4().hex[:16]}")

    def describe(self) -> str:
        return f"{self.method} {self.path}"


@dataclass(frozen=True)
class _Again:
    """Try again (after ``retry_after`` seconds when the server said so); ``error`` once spent."""

    error: BSOUnavailableError
    retry_after: float | None = None


def redact(url: str) -> str:
    """``url`` without its user name and password: logs and messages never show a credential."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit(parts._replace(netloc=netloc))


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """The header's wait in seconds: a number, or an HTTP date; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


def server_message(response: httpx.Response) -> str:
    """The ``message`` of an error body, or the start of whatever came instead."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    message = body.get("message") if isinstance(body, dict) else None
    if isinstance(message, str):
        return message
    return response.text[:300]


def _judge(call: Call, response: httpx.Response, endpoint: Endpoint) -> Any:
    """The JSON of a 2xx; raise a 4xx; ``_Again`` for a 5xx worth retrying."""
    status = response.status_code
    if 200 <= status < 300:
        return response.json() if response.content else None
    if 400 <= status < 500:
        message = server_message(response)
        if status == 404 and call.method == "POST" and call.path == "/jobs":
            message = f"{message} (nothing here registers jobs)"
        raise BSORejectedError(
            status,
            message,
            method=call.method,
            path=call.path,
            url=endpoint.safe_url.rstrip("/") + call.path,
            fix=rules.fix(status, call.method, call.path),
        )
    error = BSOUnavailableError(
        f"{call.describe()} at {endpoint.safe_url}: {status} {server_message(response)}",
        status_code=status,
    )
    if status == 503:  # rolled back: safe to retry whatever the call
        return _Again(error, retry_after_seconds(response.headers.get("Retry-After")))
    if call.idempotent:
        return _Again(error)
    raise error


def _judge_failure(call: Call, exc: httpx.TransportError, endpoint: Endpoint) -> _Again:
    """A request that got no answer: worth retrying, or raise."""
    error = BSOUnavailableError(
        f"{call.describe()}: cannot reach the server at {endpoint.safe_url}: {exc!r}"
    )
    # Refused or unconnectable: the request never left, so any call may be repeated.
    if call.idempotent or isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return _Again(error)
    raise error from exc


@dataclass
class Endpoint:
    """Where the server is and how to authenticate; shared by the two transports."""

    url: str
    token: str | None = None
    timeout: float = 10.0
    retry: Retry = field(default_factory=Retry)

    def __post_init__(self) -> None:
        rules.check_url(self.url)

    @property
    def safe_url(self) -> str:
        return redact(self.url)

    def request_options(self, call: Call) -> dict[str, Any]:
        """Everything of a request but its method, on any ``httpx`` client (given or ours)."""
        headers = {**(call.headers or {}), "User-Agent": USER_AGENT}
        headers["X-Request-ID"] = call.request_id
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        options: dict[str, Any] = {
            "url": self.url.rstrip("/") + call.path,
            "headers": headers,
            "timeout": httpx.Timeout(self.timeout),
        }
        if call.json is not None:
            options["json"] = dict(call.json)
        if call.params is not None:
            options["params"] = dict(call.params)
        return options


class SyncTransport:
    """The retry loop over an ``httpx.Client``."""

    def __init__(self, endpoint: Endpoint, client: httpx.Client | None = None) -> None:
        self.endpoint = endpoint
        self._client = client or httpx.Client()

    def close(self) -> None:
        self._client.close()

    def send(self, call: Call, *, retry: Retry | None = None) -> Any:
        """The answer's JSON; raise ``BSORejectedError`` or ``BSOUnavailableError``."""
        retry = retry or self.endpoint.retry
        for attempt in range(retry.attempts):
            try:
                response = self._client.request(call.method, **self.endpoint.request_options(call))
            except httpx.TransportError as exc:
                outcome: Any = _judge_failure(call, exc, self.endpoint)
            else:
                outcome = _judge(call, response, self.endpoint)
            if not isinstance(outcome, _Again):
                return outcome
            if attempt + 1 == retry.attempts:
                raise outcome.error
            time.sleep(retry.delay(attempt, outcome.retry_after))
        raise AssertionError("unreachable: attempts >= 1")


class AsyncTransport:
    """The same loop over an ``httpx.AsyncClient``."""

    def __init__(self, endpoint: Endpoint, client: httpx.AsyncClient | None = None) -> None:
        self.endpoint = endpoint
        self._client = client or httpx.AsyncClient()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(self, call: Call, *, retry: Retry | None = None) -> Any:
        retry = retry or self.endpoint.retry
        for attempt in range(retry.attempts):
            try:
                response = await self._client.request(
                    call.method, **self.endpoint.request_options(call)
                )
            except httpx.TransportError as exc:
                outcome: Any = _judge_failure(call, exc, self.endpoint)
            else:
                outcome = _judge(call, response, self.endpoint)
            if not isinstance(outcome, _Again):
                return outcome
            if attempt + 1 == retry.attempts:
                raise outcome.error
            await asyncio.sleep(retry.delay(attempt, outcome.retry_after))
        raise AssertionError("unreachable: attempts >= 1")

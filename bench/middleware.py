"""The cost of ``ObserveRequests`` (request id, metrics, request line) per request.

Calls the ASGI app directly (no HTTP client, no server, no socket), so that
the difference between the two apps is the middleware and little else:

- ``plain``: the app as ``create_app`` builds it, minus the middleware;
- ``observed``: the app as served;
- ``observed + json line``: as served with BSO_LOG_FORMAT=json at INFO, the
  request line formatted and written (to /dev/null).

Two routes: GET /healthz (no database: the middleware is a large share) and
the hot loop's POST /report that only says "keep training" (one lock-free read
on SQLite). Rounds alternate between the apps; the median round is printed.
It measures CPU time (all of this process's threads, aiosqlite's included),
not wall time: on shared cores the wall time mostly measures the neighbours.

    .venv/bin/python -m bench.middleware --requests 2000 --rounds 7
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message

from app.config import Settings
from app.http.app import BsoApp, create_app
from app.store.migrate import upgrade_head
from app.telemetry.log import JsonFormatter
from tests.helpers import spec as job_spec

APP: FastAPI | None = None


def without_middleware(app: FastAPI) -> ASGIApp:
    """The same app's middleware stack, minus ObserveRequests (FastAPI's own build)."""
    return FastAPI.build_middleware_stack(app)


async def call(app: ASGIApp, method: str, path: str, query: bytes, body: bytes) -> int:
    """One request straight into a middleware stack (what ``Starlette.__call__`` does)."""
    scope: dict[str, Any] = {
        "app": APP,
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query,
        "root_path": "", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000),
        "headers": [(b"host", b"bench"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    }  # fmt: skip
    sent = False
    status = 0

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def timed(app: ASGIApp, request: tuple[str, str, bytes, bytes], count: int) -> float:
    """CPU microseconds per request over ``count`` sequential requests."""
    started = time.process_time()
    for _ in range(count):
        status = await call(app, *request)
        assert status == 200, status
    return (time.process_time() - started) / count * 1e6


def devnull_json_handler() -> logging.Handler:
    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115
    handler.setFormatter(JsonFormatter())
    return handler


async def main(requests: int, rounds: int) -> None:
    global APP
    folder = Path(tempfile.mkdtemp(prefix="bso-bench-mw-"))
    url = f"sqlite+aiosqlite:///{folder}/bench.db"
    upgrade_head(url)
    settings = Settings(database_url=url, log_level="WARNING")
    app = APP = create_app(settings)
    assert isinstance(app, BsoApp)
    async with app.router.lifespan_context(app):
        observed = app.build_middleware_stack()
        plain = without_middleware(app)
        body = json.dumps(job_spec(job_id="bench-mw", job_id_prefix="bench")).encode()
        assert await call(observed, "POST", "/jobs", b"", body) == 201
        trial = {"job_id": "bench-mw", "batch_size": 64, "trial_number": 1}
        assert await call(observed, "GET", "/jobs/batch_size", b"job_id=bench-mw", b"") == 200
        report = json.dumps(
            {**trial, "time": 1.0, "energy": 100.0, "metric": 0.1, "current_epoch": 1}
        ).encode()
        cases = {
            "GET /healthz": ("GET", "/healthz", b"", b""),
            "POST /report (keep training)": ("POST", "/report", b"", report),
        }
        json_logging = devnull_json_handler()
        access = logging.getLogger("app.access")
        for name, request in cases.items():
            for warm in (plain, observed):
                await timed(warm, request, 200)
            results: dict[str, list[float]] = {"plain": [], "observed": [], "json": []}
            for _ in range(rounds):
                results["plain"].append(await timed(plain, request, requests))
                results["observed"].append(await timed(observed, request, requests))
                access.addHandler(json_logging)
                access.setLevel(logging.INFO)
                access.propagate = False
                results["json"].append(await timed(observed, request, requests))
                access.removeHandler(json_logging)
                access.setLevel(logging.NOTSET)
                access.propagate = True
            median = {key: statistics.median(values) for key, values in results.items()}
            print(
                f"{name}: CPU per request: plain {median['plain']:.1f} us, "
                f"observed {median['observed']:.1f} us "
                f"(+{median['observed'] - median['plain']:.1f}), with the JSON request line "
                f"{median['json']:.1f} us (+{median['json'] - median['plain']:.1f}); "
                f"{requests} requests x {rounds} rounds, median round"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.requests, arguments.rounds))

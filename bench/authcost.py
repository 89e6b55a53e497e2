"""What authentication costs a request: in-process requests/s with BSO_AUTH off and required.

The app runs in this process behind httpx's ASGI transport (no sockets), one
request at a time, so the numbers are the request path's own cost. Measured
per database on the hot loop's most frequent call, a "keep training" POST
/report (one lock-free read), and on GET /jobs/{job_id} (a viewer's read):

- ``off``: no credentials read;
- ``required``: a trainer token with a prefix, its row cached (BSO_AUTH_CACHE_S=2);
- ``required, no cache``: BSO_AUTH_CACHE_S=0, the token's row read on every request.

Then the guard alone, without a database: one route of a bare FastAPI app
with and without the viewer dependency, so that its own CPU cost shows
through the noise of a shared machine.

Best of ``--rounds`` runs of ``--n`` requests each, the modes taking turns: requests per
second, and this process's CPU time per request (the app and the client).

Example::

    .venv/bin/python -m bench.authcost --n 2000
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from functools import partial
from typing import Any

import httpx

from app import tokens
from app.config import AuthMode, Settings
from app.http.app import create_app
from app.roles import Role
from app.service import utcnow
from bench.hotloop import job_spec
from bench.load import wait_until_quiet
from bench.reporting import markdown_table
from bench.servers import fresh_database

MODES: list[tuple[str, AuthMode, float]] = [
    ("off", "off", 2.0),
    ("required", "required", 2.0),
    ("required, no cache", "required", 0.0),
]


async def _timed(n: int, call: Callable[[], Awaitable[httpx.Response]]) -> tuple[float, float]:
    """Requests per second (wall clock), and this process's CPU microseconds per request.

    The CPU time leaves out the database server's (PostgreSQL) and other
    processes' share of a busy machine, so it drifts less than the rate.
    """
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        response = await call()
    assert response.status_code == 200, response.text
    return n / (time.perf_counter() - start), (time.process_time() - cpu) / n * 1e6


async def run(kind: str, url: str, n: int, rounds: int) -> list[list[str]]:
    """Every mode's app at once, measured in turns, so that drift hits each alike."""
    async with AsyncExitStack() as stack:
        clients = []
        token = ""
        for _, auth, cache_s in MODES:
            settings = Settings(
                database_url=url, log_level="WARNING", auth=auth, auth_cache_s=cache_s
            )
            app = create_app(settings)
            await stack.enter_async_context(app.router.lifespan_context(app))
            if not token:  # the first app is the one without auth: set up through it
                made = await tokens.create_token(
                    app.state.engine, "bench", Role.TRAINER, ["cost"], now=utcnow()
                )
                token = made.token
            http = await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app),
                    base_url="http://test",
                    headers={"Authorization": f"Bearer {token}"},
                )
            )
            clients.append(http)
        setup = clients[0]
        assert (await setup.post("/jobs", json=job_spec("cost-1", "cost", None))).status_code == 201
        trial = (await setup.get("/jobs/batch_size", params={"job_id": "cost-1"})).json()
        report: dict[str, Any] = {
            **trial, "time": 1.0, "energy": 1.0, "metric": 0.0, "current_epoch": 1,
        }  # fmt: skip
        calls = [
            [partial(http.post, "/report", json=report) for http in clients],
            [partial(http.get, "/jobs/cost-1") for http in clients],
        ]
        best = [[(0.0, float("inf"))] * len(MODES) for _ in calls]
        for call_best, per_mode in zip(best, calls, strict=True):
            for call in per_mode:
                await _timed(n // 10, call)  # warm up
            for _ in range(rounds):
                for i, call in enumerate(per_mode):
                    rate, cpu_us = await _timed(n, call)
                    call_best[i] = (max(call_best[i][0], rate), min(call_best[i][1], cpu_us))
    rows = []
    for i, (label, _, _) in enumerate(MODES):
        cells = [
            f"{rate:,.0f} ({rate / b[0][0]:.2f}); {cpu:,.0f} us ({cpu - b[0][1]:+.0f})"
            for b in best
            for rate, cpu in [b[i]]
        ]
        rows.append([kind, label, *cells])
        print(rows[-1], flush=True)
    return rows


async def guard_alone(url: str, n: int, rounds: int) -> list[list[str]]:
    """CPU per request of a route without a database: no guard, guard with auth off, on."""
    from fastapi import Depends, FastAPI

    from app.http.auth import viewer
    from app.store.engine import create_engine

    engine = create_engine(Settings(database_url=url))
    made = await tokens.create_token(engine, "guard", Role.VIEWER, [], now=utcnow())
    cases = []
    for label, auth, path in [
        ("no guard", "off", "/plain"),
        ("viewer guard, BSO_AUTH=off", "off", "/guarded"),
        ("viewer guard, BSO_AUTH=required (cached)", "required", "/guarded"),
    ]:
        app = FastAPI()
        app.state.settings = Settings(database_url=url, auth=auth)
        app.state.engine = engine
        app.state.tokens = tokens.TokenVerifier(2.0)

        @app.get("/plain")
        async def plain() -> dict[str, str]:
            return {}

        @app.get("/guarded", dependencies=[Depends(viewer)])
        async def guarded() -> dict[str, str]:
            return {}

        cases.append((label, app, path))
    best = {label: float("inf") for label, _, _ in cases}
    headers = {"Authorization": f"Bearer {made.token}"}
    for _ in range(rounds):
        for label, app, path in cases:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://test", headers=headers
            ) as http:
                _, cpu_us = await _timed(n, partial(http.get, path))
            best[label] = min(best[label], cpu_us)
    await engine.dispose()
    base = best["no guard"]
    return [[label, f"{cpu:.0f} us ({cpu - base:+.0f})"] for label, cpu in best.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="requests per run")
    parser.add_argument("--rounds", type=int, default=5, help="runs per mode (the best counts)")
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--quiet-wait", type=float, default=30.0)
    args = parser.parse_args()
    rows = []
    for kind in ("sqlite", "postgres") if args.db == "both" else (args.db,):
        wait_until_quiet(args.quiet_wait)
        with fresh_database(kind) as url:
            rows += asyncio.run(run(kind, url, args.n, args.rounds))
    header = [
        "db",
        "BSO_AUTH",
        "POST /report: req/s (vs off); CPU/request (vs off)",
        "GET /jobs/{job_id}: req/s (vs off); CPU/request (vs off)",
    ]
    print(markdown_table(header, rows))
    with fresh_database("sqlite") as url:
        alone = asyncio.run(guard_alone(url, args.n, args.rounds))
    print(markdown_table(["the guard alone, no database", "CPU/request (vs no guard)"], alone))


if __name__ == "__main__":
    main()

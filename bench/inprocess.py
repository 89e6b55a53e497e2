"""The hot loop's requests straight into the ASGI app, in this process: CPU per request.

No HTTP client, no server, no socket: each request is one call of the app as
served (middleware included), one at a time, on a fresh PostgreSQL database.
The request mix is bench.hotloop's (register, dispatch, ``--epochs`` reports
of which the last reaches the target, end; ``--recurrences`` per job). It
prints the process's CPU time per request type (``time.process_time``: the
neighbours on shared cores change it little) and, with ``--profile``, the
top functions of a cProfile run. It also counts the pool checkouts of each
request type (SQLAlchemy's pool "checkout" event), the same in every round.

It imports ``app`` from the working directory, so that one copy of this file
measures any checkout (both need SQLAlchemy's async engine; the database is
migrated with that checkout's migrations)::

    .venv/bin/python -m bench.inprocess --jobs 16
    (cd ../base && ../wt/.venv/bin/python ../wt/bench/inprocess.py --jobs 16)
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import statistics
import sys
import time
import uuid
from collections import defaultdict
from typing import Any

sys.path.insert(0, os.getcwd())

import asyncpg
import uvloop
from sqlalchemy import event
from starlette.types import ASGIApp, Message

from app.config import Settings
from app.http.app import create_app
from app.store.migrate import upgrade_head

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


async def call(
    app: ASGIApp, method: str, path: str, query: bytes = b"", body: bytes = b""
) -> tuple[int, bytes]:
    """One request through the app as served (what uvicorn hands it)."""
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query,
        "root_path": "", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000),
        "headers": [(b"host", b"bench"), (b"content-length", str(len(body)).encode())],
    }  # fmt: skip
    sent = False
    status = 0
    chunks: list[bytes] = []

    async def receive() -> Message:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


def spec(job_id: str) -> bytes:
    return json.dumps(
        {
            "job_id": job_id,
            "job_id_prefix": "inproc",
            "default_batch_size": 64,
            "batch_sizes": [16, 32, 64, 128],
            "eta_knob": 0.5,
            "beta_knob": 2.0,
            "target_metric": 0.5,
            "higher_is_better_metric": True,
            "max_epochs": 20,
            "num_pruning_rounds": 2,
            "window_size": 0,
            "max_power": 300,
            "number_of_gpus": 1,
            "gpu_model": "A100",
            "mab_seed": 7,
        }
    ).encode()


CHECKOUTS = [0]


def count_checkout(*_: Any) -> None:
    CHECKOUTS[0] += 1


async def one_job(
    app: ASGIApp,
    job_id: str,
    recurrences: int,
    epochs: int,
    cpu: dict[str, list[float]],
    checkouts: dict[str, list[int]] | None = None,
) -> None:
    async def timed(name: str, *request: Any) -> bytes:
        before = CHECKOUTS[0]
        started = time.process_time()
        status, body = await call(app, *request)
        cpu[name].append(time.process_time() - started)
        if checkouts is not None:
            checkouts[name].append(CHECKOUTS[0] - before)
        assert status < 300, (name, status, body)
        return body

    for _ in range(recurrences):
        await timed("POST /jobs", "POST", "/jobs", b"", spec(job_id))
        body = await timed("GET /jobs/batch_size", "GET", "/jobs/batch_size",
                           f"job_id={job_id}".encode())  # fmt: skip
        trial = json.loads(body)
        for epoch in range(1, epochs + 1):
            last = epoch == epochs
            metric = 0.6 if last else 0.5 * epoch / epochs
            report = {**trial, "time": 10.0 * epoch, "energy": 2000.0 * epoch,
                      "metric": metric, "current_epoch": epoch}  # fmt: skip
            name = "POST /report (final)" if last else "POST /report"
            await timed(name, "POST", "/report", b"", json.dumps(report).encode())
        await timed("PATCH /trials", "PATCH", "/trials", b"", json.dumps(trial).encode())


async def main(args: argparse.Namespace) -> None:
    name = f"bso_inproc_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    try:
        await asyncio.to_thread(upgrade_head, url)
        app = create_app(Settings(database_url=url, log_level="WARNING"))
        async with app.router.lifespan_context(app):
            event.listen(app.state.engine.sync_engine.pool, "checkout", count_checkout)
            warm: dict[str, list[float]] = defaultdict(list)
            for j in range(2):
                await one_job(app, f"inproc-warm-{j}", args.recurrences, args.epochs, warm)
            checkouts: dict[str, list[int]] = defaultdict(list)
            await one_job(app, "inproc-counted", args.recurrences, args.epochs, warm, checkouts)
            rounds: list[dict[str, list[float]]] = []
            profiler = cProfile.Profile(time.process_time) if args.profile else None
            for r in range(args.rounds):
                cpu: dict[str, list[float]] = defaultdict(list)
                if profiler:
                    profiler.enable()
                for j in range(args.jobs):
                    await one_job(app, f"inproc-{r}-{j}", args.recurrences, args.epochs, cpu)
                if profiler:
                    profiler.disable()
                rounds.append(cpu)
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
    names = list(rounds[0])
    print(f"pool checkouts per request (one job, {args.recurrences} recurrences):")
    for n in names:
        counts = checkouts[n]
        print(f"  {n:24s} {statistics.fmean(counts):5.2f}  (min {min(counts)}, max {max(counts)})")
    total = sum(sum(v) for v in checkouts.values()) / sum(len(v) for v in checkouts.values())
    print(f"  {'all (hot-loop mix)':24s} {total:5.2f}")
    print(f"CPU us per request, median of {args.rounds} rounds (mean within a round):")
    per_round_all = []
    for n in names:
        means = [statistics.fmean(c[n]) * 1e6 for c in rounds]
        print(f"  {n:24s} {statistics.median(means):8.0f}  (rounds: "
              f"{', '.join(f'{m:.0f}' for m in means)})")  # fmt: skip
    for c in rounds:
        total = sum(sum(v) for v in c.values())
        per_round_all.append(total / sum(len(v) for v in c.values()) * 1e6)
    print(f"  {'all (hot-loop mix)':24s} {statistics.median(per_round_all):8.0f}  (rounds: "
          f"{', '.join(f'{m:.0f}' for m in per_round_all)})")  # fmt: skip
    if profiler:
        stats = pstats.Stats(profiler)
        stats.sort_stats(args.sort).print_stats(args.top)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=16, help="jobs per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--recurrences", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile the measured rounds")
    parser.add_argument("--sort", default="tottime", help="pstats sort key")
    parser.add_argument("--top", type=int, default=40)
    uvloop.run(main(parser.parse_args()))

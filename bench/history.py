"""History: does a job's latency grow with its number of finished trials?

For each database (PostgreSQL, SQLite) one ``bso serve`` process holds jobs
with 10, 100, 1,000 and 10,000 finished trials, for window_size 0 (arms
refitted from running statistics) and 10 (refitted from the last 10 results).
Each job is then measured through the real HTTP server, one request at a
time: p50/p95 latency of dispatch (GET /jobs/batch_size) and of the final
report that ends the trial (POST /report), with ratios against size 10.

How the history is built (fast, but consistent with what the service would
have stored):

1. POST /jobs (num_pruning_rounds 0: every batch size is an arm), GET
   /jobs/batch_size (the job enters the bandit stage, its arm rows are
   written by the service) and a final POST /report: trial 1 is real.
2. Trials 2..n are bulk-inserted into ``trial`` as finished MAB trials
   (about 5 % Failed, the rest Succeeded with cost = zeus_cost(energy, time)),
   through SQLAlchemy Core on app.store.tables' ``trial`` table, so that the
   column types store the values (timestamps in the one format that
   ``UTCDateTime`` writes, on SQLite too), exactly as the service does.
3. Every ``batch_size`` row's running statistics (count, mean, M2 of the
   rewards of all its Succeeded trials), every ``arm`` row (fitted by
   app.bandit.fit_arm on the last window_size rewards, or all of them) and the
   job's ``next_trial_number``, ``min_cost`` and ``min_cost_batch_size`` are
   recomputed from the trials (Core updates of ``batch_size``, ``arm``,
   ``job``), then the tables are ANALYZEd. The bench's engine is the
   service's own (``app.store.engine.create_engine``: on SQLite the same PRAGMAs and
   ``BEGIN IMMEDIATE``).

Every job is built before any is measured, so all sizes see the same table
sizes. Each measured iteration dispatches a trial and ends it with a final
report; the bench then deletes that one trial row over its own connection
(not timed), so the history stays at exactly n trials while being measured.
Iterations go round-robin over all jobs, in a shuffled order per round, so
that any drift of the machine's speed hits every size alike.

Examples::

    .venv/bin/python -m bench.history
    .venv/bin/python -m bench.history --db postgres --sizes 10,1000 --samples 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.load import RawClient, machine_cpu_seconds, wait_until_quiet
from bench.reporting import markdown_table, percentiles_ms
from bench.servers import bso_server, fresh_database

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

BATCH_SIZES = [32, 64, 128, 256]
ETA, MAX_POWER = 0.5, 300.0


def job_spec(job_id: str, window: int) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "job_id_prefix": "hist",
        "batch_sizes": BATCH_SIZES,
        "default_batch_size": 64,
        "eta_knob": ETA,
        "beta_knob": None,
        "target_metric": 0.5,
        "max_epochs": 20,
        "num_pruning_rounds": 0,
        "window_size": window,
        "mab_num_explorations": 2,
        "max_power": MAX_POWER,
        "number_of_gpus": 1,
        "gpu_model": "NVIDIA A40",
    }


def final_report(trial: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    return {
        **trial,
        "time": 100.0 * (1 + rng.uniform(-0.1, 0.1)) * trial["batch_size"] / 64,
        "energy": 20_000.0 * (1 + rng.uniform(-0.1, 0.1)),
        "metric": 0.6,
        "current_epoch": 5,
    }


async def expect(client: RawClient, method: str, path: str, **kwargs: Any) -> Any:
    response = await client.request(method, path, **kwargs)
    if not 200 <= response.status_code < 300:
        raise RuntimeError(f"{method} {path}: {response.status_code} {response.content[:300]!r}")
    return response.json()


# ---------------------------------------------------------------- building


async def build_job(
    client: RawClient, engine: AsyncEngine, job_id: str, window: int, n: int
) -> None:
    """A job in the bandit stage with exactly ``n`` finished trials."""
    from sqlalchemy import insert, select, update

    from app.bandit import (
        FailureReason,
        RewardStats,
        TrialStatus,
        TrialType,
        fit_arm,
        reward,
        zeus_cost,
    )
    from app.store.tables import arm, batch_size, job
    from app.store.tables import trial as trial_table

    rng = random.Random(f"{job_id}")
    await expect(client, "POST", "/jobs", json=job_spec(job_id, window))
    trial = await expect(client, "GET", "/jobs/batch_size", params={"job_id": job_id})
    await expect(client, "POST", "/report", json=final_report(trial, rng))

    start = datetime.now(UTC) - timedelta(days=2 * n + 2)
    rows = []
    for number in range(2, n + 1):
        bs = rng.choice(BATCH_SIZES)
        begin = start + timedelta(days=2 * number)
        row: dict[str, Any] = {
            "job_id": job_id,
            "trial_number": number,
            "batch_size": bs,
            "type": TrialType.MAB,
            "start_timestamp": begin,
            "end_timestamp": begin + timedelta(hours=3),
            "status": TrialStatus.FAILED,
            "failure_reason": FailureReason.ENDED,
            "lease_renewed_at": begin,
            "time": None,
            "energy": None,
            "cost": None,
            "converged": None,
        }
        if rng.random() >= 0.05:
            report = final_report({"batch_size": bs}, rng)
            row.update(
                status=TrialStatus.SUCCEEDED,
                failure_reason=None,
                time=report["time"],
                energy=report["energy"],
                cost=zeus_cost(report["energy"], report["time"], ETA, MAX_POWER),
                converged=rng.random() < 0.9,
            )
        rows.append(row)
    async with engine.begin() as conn:
        for chunk in range(0, len(rows), 1000):
            await conn.execute(insert(trial_table), rows[chunk : chunk + 1000])
        # Recompute what the service keeps per job from the whole history.
        result = await conn.execute(
            select(trial_table.c.batch_size, trial_table.c.cost, trial_table.c.converged)
            .where(trial_table.c.job_id == job_id, trial_table.c.status == TrialStatus.SUCCEEDED)
            .order_by(trial_table.c.trial_number)
        )
        costs: dict[int, list[float]] = {bs: [] for bs in BATCH_SIZES}
        min_cost: float | None = None
        min_bs = 64
        for bs, cost, converged in result:
            costs[bs].append(cost)
            if converged and (min_cost is None or cost < min_cost):
                min_cost, min_bs = cost, bs
        for bs, values in costs.items():
            stats = RewardStats()
            for cost in values:
                stats = stats.add(reward(cost))
            await conn.execute(
                update(batch_size)
                .where(batch_size.c.job_id == job_id, batch_size.c.batch_size == bs)
                .values(reward_count=stats.count, reward_mean=stats.mean, reward_m2=stats.m2)
            )
            recent = values[-window:] if window else values
            fitted = fit_arm(bs, [reward(c) for c in recent], prior_mean=0.0, prior_precision=0.0)
            await conn.execute(
                update(arm)
                .where(arm.c.job_id == job_id, arm.c.batch_size == bs)
                .values(
                    param_mean=fitted.param_mean,
                    param_precision=fitted.param_precision,
                    reward_precision=fitted.reward_precision,
                    num_observations=fitted.num_observations,
                )
            )
        await conn.execute(
            update(job)
            .where(job.c.job_id == job_id)
            .values(next_trial_number=n + 1, min_cost=min_cost, min_cost_batch_size=min_bs)
        )


# --------------------------------------------------------------- measuring


async def one_iteration(
    client: RawClient, engine: AsyncEngine, job_id: str, rng: random.Random
) -> tuple[float, float]:
    """Dispatch and finish one trial; return both latencies; delete the trial again."""
    from sqlalchemy import delete

    from app.store.tables import trial as trial_table

    t0 = time.perf_counter()
    trial = await expect(client, "GET", "/jobs/batch_size", params={"job_id": job_id})
    t1 = time.perf_counter()
    answer = await expect(client, "POST", "/report", json=final_report(trial, rng))
    t2 = time.perf_counter()
    if not answer["stop_train"]:
        raise RuntimeError(f"report on {trial} did not end the trial: {answer}")
    async with engine.begin() as conn:  # keep the history at exactly n trials
        await conn.execute(
            delete(trial_table).where(
                trial_table.c.job_id == job_id,
                trial_table.c.trial_number == trial["trial_number"],
            )
        )
    return t1 - t0, t2 - t1


async def measure_jobs(
    client: RawClient, engine: AsyncEngine, job_ids: list[str], samples: int, warmup: int
) -> dict[str, dict[str, list[float]]]:
    """Round-robin over the jobs in a shuffled order per round, so drift hits all sizes alike."""
    rngs = {job_id: random.Random(job_id) for job_id in job_ids}
    order = random.Random(0)
    latencies: dict[str, dict[str, list[float]]] = {
        job_id: {"dispatch": [], "final report": []} for job_id in job_ids
    }
    for round_ in range(warmup + samples):
        for job_id in order.sample(job_ids, len(job_ids)):
            dispatch, report = await one_iteration(client, engine, job_id, rngs[job_id])
            if round_ >= warmup:
                latencies[job_id]["dispatch"].append(dispatch)
                latencies[job_id]["final report"].append(report)
    return latencies


async def run_database(url: str, server_url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    from sqlalchemy import text

    from app.config import Settings
    from app.store.engine import create_engine

    engine = create_engine(Settings(database_url=url, log_level="WARNING"))
    results = []
    try:
        async with RawClient(server_url, 1) as client:
            build0 = time.perf_counter()
            jobs = [(w, n, f"hist-w{w}-n{n}") for w in args.windows for n in args.sizes]
            for window, n, job_id in jobs:
                await build_job(client, engine, job_id, window, n)
            async with engine.begin() as conn:
                await conn.execute(text("ANALYZE"))
            print(f"  built {len(jobs)} jobs in {time.perf_counter() - build0:.1f} s", flush=True)
            wait_until_quiet(60.0)
            machine0, measure0 = machine_cpu_seconds(), time.perf_counter()
            ids = [job_id for _, _, job_id in jobs]
            latencies = await measure_jobs(client, engine, ids, args.samples, args.warmup)
            wall = time.perf_counter() - measure0
            busy = (machine_cpu_seconds() - machine0) / wall
            print(
                f"  measured in {wall:.1f} s; machine CPU busy {busy:.2f} cores "
                "(the bench, the server and PostgreSQL included)",
                flush=True,
            )
            async with engine.connect() as conn:
                for window, n, job_id in jobs:
                    results.append({"window": window, "size": n, "latencies": latencies[job_id]})
                    count, stage = (
                        await conn.execute(
                            text(
                                "SELECT (SELECT count(*) FROM trial WHERE job_id = :job), "
                                "(SELECT stage FROM job WHERE job_id = :job)"
                            ),
                            {"job": job_id},
                        )
                    ).one()
                    if (count, stage) != (n, "MAB"):
                        raise RuntimeError(f"{job_id}: {count} trials, stage {stage}")
            print("  checked: every job still has exactly its n trials, in the MAB stage")
    finally:
        await engine.dispose()
    return results


def table(results: list[dict[str, Any]]) -> tuple[str, float]:
    """The markdown table with ratios of p50 against size 10; also the worst ratio at >= 1,000."""
    header = [
        "window",
        "trials",
        "dispatch p50",
        "p95",
        "x size 10",
        "final report p50",
        "p95",
        "x size 10",
    ]
    rows, worst = [], 0.0
    base: dict[tuple[int, str], float] = {}
    for r in results:
        cells = [str(r["window"]), f"{r['size']:,}"]
        for kind in ("dispatch", "final report"):
            p50, p95 = percentiles_ms(r["latencies"][kind], (50, 95))
            base.setdefault((r["window"], kind), p50)
            ratio = p50 / base[(r["window"], kind)]
            if r["size"] >= 1000:
                worst = max(worst, ratio)
            cells += [f"{p50:.2f} ms", f"{p95:.2f} ms", f"{ratio:.2f}"]
        rows.append(cells)
    return markdown_table(header, rows), worst


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Latency of dispatch and of the final report against a job's history size.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--db", choices=["postgres", "sqlite", "both"], default="both")
    parser.add_argument(
        "--sizes",
        default="10,100,1000,10000",
        help="finished trials per job; the first is the baseline",
    )
    parser.add_argument("--windows", default="0,10", help="window_size values")
    parser.add_argument("--samples", type=int, default=100, help="measured iterations per job")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured iterations first")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.windows = [int(w) for w in args.windows.split(",")]
    if min(args.sizes) < 2:
        parser.error("sizes must be >= 2")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    databases = ["postgres", "sqlite"] if args.db == "both" else [args.db]
    out: dict[str, Any] = {}
    for db in databases:
        print(f"# {db}", flush=True)
        with (
            fresh_database(db) as url,
            bso_server(url, workers=args.workers) as server,
        ):
            results = asyncio.run(run_database(url, server.url, args))
        text, worst = table(results)
        print(f"\n## {db}: p50/p95 latency, one request at a time ({args.samples} samples)")
        print(text)
        verdict = "meets" if worst <= 1.2 else "MISSES"
        print(f"worst p50 ratio at >= 1,000 trials: {worst:.2f} ({verdict} the 1.2x target)\n")
        out[db] = [
            {**r, "latencies": {k: list(map(float, v)) for k, v in r["latencies"].items()}}
            for r in results
        ]
        out[db + "_worst_ratio"] = worst
    if args.json:
        args.json.write_text(json.dumps(out))


if __name__ == "__main__":
    main()

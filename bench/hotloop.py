"""Hot loop: many recurring jobs through the Zeus wire API, against a hello-world ceiling.

Each virtual job, per recurrence, does what Zeus's client does:
register (POST /jobs, 201 the first time, 200 after), dispatch (GET
/jobs/batch_size), one report per epoch (POST /report with cumulative time and
energy; the last epoch reaches the target) and end (PATCH /trials). At most
``--concurrency`` requests are in flight at once, over keep-alive connections
(bench.load.RawClient by default; ``--client httpx`` for httpx.AsyncClient
with a pool sized to the concurrency).

In the same run a FastAPI hello-world (bench/hello_app.py), served by uvicorn
with the very options ``bso serve`` uses (worker count, log level, access log
off, proxy headers), gets the same request shape: the same bodies, GETs to a
GET and POSTs/PATCHes to a POST, same concurrency, same number of requests.
Our throughput as a fraction of that ceiling is the headline number.

Examples::

    .venv/bin/python -m bench.hotloop --db postgres --workers 1
    .venv/bin/python -m bench.hotloop --db sqlite --workers 2 --jobs 32
    .venv/bin/python -m bench.hotloop --url http://127.0.0.1:8000 --no-hello
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from bench.load import RawClient, RawClientError, machine_cpu_seconds, wait_until_quiet
from bench.profiling import profile_samples, py_spy, summarize_stacks, top_frames
from bench.reporting import Recorder, latency_rows, markdown_table
from bench.servers import (
    Server,
    bso_server,
    cpu_seconds,
    fresh_database,
    hello_server,
    postgres_cpu_seconds,
)

ENDPOINTS = ("POST /jobs", "GET /jobs/batch_size", "POST /report", "PATCH /trials")
BATCH_SIZES = [32, 64, 128, 256]
PROFILE_RATE = 200  # py-spy samples per second


@dataclass(frozen=True)
class Workload:
    jobs: int
    concurrency: int
    recurrences: int
    epochs: int
    warmup: int
    seeded: bool
    target: str  # "bso" or "hello"
    prefix: str
    client: str = "raw"  # "raw" (bench.load.RawClient) or "httpx"


def job_spec(job_id: str, prefix: str, seed: int | None) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "job_id_prefix": prefix,
        "batch_sizes": BATCH_SIZES,
        "default_batch_size": 64,
        "eta_knob": 0.5,
        "beta_knob": 2.0,
        "target_metric": 0.5,
        "higher_is_better_metric": True,
        "max_epochs": 20,
        "num_pruning_rounds": 2,
        "window_size": 0,
        "mab_prior_mean": 0.0,
        "mab_prior_precision": 0.0,
        "mab_num_explorations": 2,
        "mab_seed": seed,
        "max_power": 300.0,
        "number_of_gpus": 1,
        "gpu_model": "NVIDIA A40",
    }


Client = httpx.AsyncClient | RawClient


async def _call(
    client: Client,
    sem: asyncio.Semaphore,
    rec: Recorder | None,
    label: str,
    method: str,
    path: str,
    **kwargs: Any,
) -> Any:
    async with sem:
        start = time.perf_counter()
        try:
            response = await client.request(method, path, **kwargs)
        except (httpx.HTTPError, RawClientError) as exc:
            if rec is not None:
                rec.errors[f"{label} {type(exc).__name__}"] += 1
            return None
        elapsed = time.perf_counter() - start
    if rec is not None:
        rec.add(label, elapsed, response.status_code)
    return response


async def run_job(
    client: Client,
    sem: asyncio.Semaphore,
    rec: Recorder | None,
    w: Workload,
    index: int,
    recurrences: int,
) -> None:
    """One recurring job: ``recurrences`` times register, dispatch, report per epoch, end."""
    rng = random.Random(index)
    job_id = f"{w.prefix}-{index:05d}"
    spec = job_spec(job_id, w.prefix, index if w.seeded else None)
    hello = w.target == "hello"
    for recurrence in range(recurrences):
        await _call(
            client, sem, rec, "POST /jobs", "POST", "/echo" if hello else "/jobs", json=spec
        )
        response = await _call(
            client,
            sem,
            rec,
            "GET /jobs/batch_size",
            "GET",
            "/hello" if hello else "/jobs/batch_size",
            params={"job_id": job_id},
        )
        if response is None or response.status_code != 200:
            continue
        if hello:
            batch_size, trial_number = 64, recurrence + 1
        else:
            body = response.json()
            batch_size, trial_number = body["batch_size"], body["trial_number"]
        trial = {"job_id": job_id, "batch_size": batch_size, "trial_number": trial_number}
        # Same cost per epoch for every batch size (+-5%): beta * min_cost never
        # stops a trial early, so every recurrence sends exactly `epochs` reports.
        epoch_time, epoch_energy = 10.0 * (1 + rng.uniform(-0.05, 0.05)), 2000.0
        for epoch in range(1, w.epochs + 1):
            last = epoch == w.epochs
            report = {
                **trial,
                "time": epoch * epoch_time,
                "energy": epoch * epoch_energy * (1 + rng.uniform(-0.05, 0.05)),
                "metric": 0.6 if last else 0.5 * epoch / w.epochs,
                "current_epoch": epoch,
            }
            response = await _call(
                client,
                sem,
                rec,
                "POST /report",
                "POST",
                "/echo" if hello else "/report",
                json=report,
            )
            if hello or response is None or response.status_code != 200:
                continue
            if response.json()["stop_train"]:
                break
        await _call(
            client, sem, rec, "PATCH /trials", "PATCH", "/echo" if hello else "/trials", json=trial
        )


async def drive(
    url: str, w: Workload, job_indices: list[int], start_at: float | None
) -> dict[str, Any]:
    """Warm up, then run the measured recurrences of ``job_indices``; return the results."""
    client: Client
    if w.client == "httpx":
        limits = httpx.Limits(
            max_connections=w.concurrency, max_keepalive_connections=w.concurrency
        )
        client = httpx.AsyncClient(base_url=url, limits=limits, timeout=60)
    else:
        client = RawClient(url, w.concurrency)
    async with client:
        sem = asyncio.Semaphore(w.concurrency)
        if w.warmup:
            warm = replace(w, prefix=w.prefix + "w")
            await asyncio.gather(
                *(run_job(client, sem, None, warm, i, w.warmup) for i in job_indices)
            )
        if start_at is not None:  # line up with the other client processes
            await asyncio.sleep(max(0.0, start_at - time.time()))
        rec = Recorder()
        cpu0, t0 = cpu_seconds(os.getpid()), time.time()
        await asyncio.gather(*(run_job(client, sem, rec, w, i, w.recurrences) for i in job_indices))
        t1, cpu1 = time.time(), cpu_seconds(os.getpid())
    return {
        "latencies": dict(rec.latencies),
        "statuses": [[e, s, n] for (e, s), n in rec.statuses.items()],
        "errors": dict(rec.errors),
        "t0": t0,
        "t1": t1,
        "cpu": cpu1 - cpu0,
    }


def _run(coroutine: Any) -> Any:
    """Run on uvloop (as uvicorn does) when it is installed: a cheaper client."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def _client_process(url: str, w: Workload, indices: list[int], start_at: float, out: Any) -> None:
    out.put(_run(drive(url, w, indices, start_at)))


def run_load(url: str, w: Workload, client_procs: int) -> dict[str, Any]:
    """Run the workload from 1 process (in this one) or several; merge the results."""
    indices = list(range(w.jobs))
    if client_procs == 1:
        parts = [_run(drive(url, w, indices, None))]
    else:
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        share = replace(w, concurrency=max(1, w.concurrency // client_procs))
        # Start after every process has imported and warmed up (generous margin).
        start_at = time.time() + 8.0 + w.warmup * w.jobs * 0.05
        procs = [
            ctx.Process(
                target=_client_process, args=(url, share, indices[k::client_procs], start_at, queue)
            )
            for k in range(client_procs)
        ]
        for p in procs:
            p.start()
        parts = [queue.get() for _ in procs]
        for p in procs:
            p.join()
    rec = Recorder()
    for part in parts:
        for endpoint, values in part["latencies"].items():
            rec.latencies[endpoint].extend(values)
        for endpoint, status, n in part["statuses"]:
            rec.statuses[(endpoint, status)] += n
        rec.errors.update(part["errors"])
    t0, t1 = min(p["t0"] for p in parts), max(p["t1"] for p in parts)
    return {"recorder": rec, "wall": t1 - t0, "client_cpu": sum(p["cpu"] for p in parts)}


def measure(
    name: str,
    server: Server | None,
    url: str,
    w: Workload,
    client_procs: int,
    db: str | None,
    profile: str | None = None,
    quiet_wait: float = 0.0,
) -> dict[str, Any]:
    if quiet_wait:
        wait_until_quiet(quiet_wait)
    server_cpu0 = server.cpu_seconds() if server else 0.0
    worker_cpu0 = {pid: cpu_seconds(pid) for pid in server.worker_pids()} if server else {}
    pg_cpu0 = postgres_cpu_seconds()
    machine0 = machine_cpu_seconds()
    stacks: list[str] = []
    profiled_cpu = 0.0
    if profile and server:
        first = server.worker_pids()[0]
        profiled_cpu = -cpu_seconds(first)
        with py_spy(server.worker_pids(), profile, rate=PROFILE_RATE) as stacks:
            result = run_load(url, w, client_procs)
        profiled_cpu += cpu_seconds(first)  # the sampled worker's CPU over the whole window
    else:
        result = run_load(url, w, client_procs)
    rec: Recorder = result["recorder"]
    wall = result["wall"]
    machine = machine_cpu_seconds() - machine0
    # The client's CPU counts only its measured phase; warm-up is a small share otherwise.
    warm = w.warmup / (w.warmup + w.recurrences)
    out = {
        "name": name,
        "requests": rec.count,
        "wall_s": wall,
        "rps": rec.count / wall if wall else 0.0,
        "latency_rows": latency_rows(rec, ENDPOINTS),
        "non_2xx": rec.non_2xx(),
        "cpu_cores": {"client": result["client_cpu"] / wall},
    }
    server_cpu = 0.0
    if server:
        # The servers' CPU covers the warm-up too (a small share of the requests).
        server_cpu = (server.cpu_seconds() - server_cpu0) * (1 - warm)
        out["cpu_cores"]["server"] = server_cpu / wall
        out["server_cpu_ms_per_request"] = 1000 * server_cpu / max(rec.count, 1)
        out["peak_rss_mib"] = server.peak_rss_mib()
        # With several workers the kernel hands each new connection to whichever
        # worker accepts first; the split shows a run where one worker got most.
        used = {pid: cpu_seconds(pid) - cpu0 for pid, cpu0 in worker_cpu0.items()}
        out["worker_cpu_split"] = [v / (sum(used.values()) or 1) for v in used.values()]
    pg_cpu = max(0.0, postgres_cpu_seconds() - pg_cpu0) * (1 - warm)
    if db == "postgres":
        out["cpu_cores"]["postgres"] = pg_cpu / wall
    # Whatever else ran on the machine meanwhile (another test suite, say).
    accounted = server_cpu + pg_cpu + result["client_cpu"]
    out["cpu_cores"]["other processes"] = max(0.0, machine * (1 - warm) - accounted) / wall
    if stacks:
        out["profile_files"] = stacks
        out["profile_samples"] = profile_samples(stacks[0])
        out["profile_busy_samples"] = profiled_cpu * PROFILE_RATE
        out["profile"] = summarize_stacks(stacks[0], out["profile_busy_samples"])
        out["profile_top"] = top_frames(stacks[0])
    return out


def print_result(r: dict[str, Any]) -> None:
    print(
        f"\n## {r['name']}: {r['rps']:.0f} req/s ({r['requests']} requests in {r['wall_s']:.2f} s)"
    )
    header = ["endpoint", "n", "p50 ms", "p95 ms", "p99 ms", "max ms"]
    print(markdown_table(header, r["latency_rows"]))
    print("non-2xx:", r["non_2xx"] or "none")
    cores = ", ".join(f"{k} {v:.2f}" for k, v in r["cpu_cores"].items())
    print(f"CPU cores busy (CPU s / wall s): {cores}")
    if "server_cpu_ms_per_request" in r:
        print(f"server CPU per request: {r['server_cpu_ms_per_request']:.2f} ms")
    if len(r.get("worker_cpu_split", [])) > 1:
        split = " / ".join(f"{v:.0%}" for v in r["worker_cpu_split"])
        print(f"CPU split between the workers: {split}")
    if "peak_rss_mib" in r:
        rss = ", ".join(f"{k}: {v:.1f} MiB" for k, v in r["peak_rss_mib"].items())
        print(f"peak RSS (VmHWM): {rss}")
    if "profile" in r:
        samples, busy = r["profile_samples"], r["profile_busy_samples"]
        print(
            f"\nprofile of {r['profile_files'][0]} (py-spy, {PROFILE_RATE} Hz; throughput "
            f"above is lowered by the sampling): {samples} samples = {samples / PROFILE_RATE:.1f} s"
            f", the worker's CPU time over the window {busy / PROFILE_RATE:.1f} s"
        )
        print(
            markdown_table(
                ["where", "share of the worker's busy time"],
                [[k, f"{v:.1%}"] for k, v in r["profile"]],
            )
        )
        print("\ntop functions by self time (share of all samples):")
        print(markdown_table(["function", "self"], [[k, f"{v:.1%}"] for k, v in r["profile_top"]]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Hot-loop throughput and latency of the Zeus wire API, "
        "against a FastAPI hello-world ceiling served the same way.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--url", help="drive this running server instead of starting one")
    parser.add_argument(
        "--db",
        choices=["postgres", "sqlite"],
        default="postgres",
        help="database of the server this starts (fresh, migrated)",
    )
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers, both servers")
    parser.add_argument("--jobs", type=int, default=64, help="virtual recurring jobs")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    parser.add_argument(
        "--recurrences",
        type=int,
        default=12,
        help="measured recurrences per job (8 pruning + bandit ones)",
    )
    parser.add_argument("--epochs", type=int, default=3, help="reports per recurrence")
    parser.add_argument(
        "--warmup", type=int, default=1, help="unmeasured recurrences of separate jobs first"
    )
    parser.add_argument(
        "--seeded",
        action="store_true",
        help="give jobs a mab_seed (persists the rng state per dispatch)",
    )
    parser.add_argument(
        "--client",
        choices=["raw", "httpx"],
        default="raw",
        help="raw: lean keep-alive HTTP/1.1 client (bench/load.py); "
        "httpx: httpx.AsyncClient, pool sized to the concurrency "
        "(CPU-bound at ~500 req/s here)",
    )
    parser.add_argument(
        "--client-procs",
        type=int,
        default=1,
        help="load-generator processes (the concurrency is split)",
    )
    parser.add_argument("--log-level", default="WARNING", help="BSO_LOG_LEVEL / uvicorn level")
    parser.add_argument("--no-hello", action="store_true", help="skip the hello-world ceiling")
    parser.add_argument(
        "--hello-access-log",
        action="store_true",
        help="serve hello-world with uvicorn's access log (bso serve turns it off)",
    )
    parser.add_argument(
        "--hello-scale",
        type=int,
        default=4,
        help="hello-world runs this many times the recurrences (it is fast; "
        "a longer run measures it better)",
    )
    parser.add_argument(
        "--profile",
        metavar="PREFIX",
        help="sample the bso worker(s) with py-spy into PREFIX.<pid>.txt "
        "and print where the time goes",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each measurement, wait up to this many seconds for "
        "other processes to leave the CPUs idle (0: don't)",
    )
    parser.add_argument(
        "--python",
        type=Path,
        help="serve with this interpreter (python -m app.cli, this checkout on PYTHONPATH; "
        "a venv with the dependencies) instead of .venv's bso",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    tag = f"hot{os.getpid()}{int(time.time()) % 100000}"
    base = {
        "jobs": args.jobs,
        "concurrency": args.concurrency,
        "recurrences": args.recurrences,
        "epochs": args.epochs,
        "warmup": args.warmup,
        "seeded": args.seeded,
        "client": args.client,
    }
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    ours = Workload(**base, target="bso", prefix=tag)
    if args.url:
        results["bso"] = measure(
            "bso", None, args.url, ours, args.client_procs, None, None, args.quiet_wait
        )
        print_result(results["bso"])
    else:
        with (
            fresh_database(args.db) as database_url,
            bso_server(
                database_url, workers=args.workers, log_level=args.log_level, python=args.python
            ) as server,
        ):
            results["bso"] = measure(
                f"bso ({args.db}, {args.workers} worker(s))",
                server,
                server.url,
                ours,
                args.client_procs,
                args.db,
                args.profile,
                args.quiet_wait,
            )
        print_result(results["bso"])
    if not args.no_hello:
        hello = replace(ours, target="hello", recurrences=args.recurrences * args.hello_scale)
        with hello_server(
            workers=args.workers,
            log_level=args.log_level,
            access_log=args.hello_access_log,
        ) as server:
            results["hello"] = measure(
                f"hello-world ({args.workers} worker(s))",
                server,
                server.url,
                hello,
                args.client_procs,
                None,
                None,
                args.quiet_wait,
            )
        print_result(results["hello"])
        ratio = results["bso"]["rps"] / results["hello"]["rps"]
        results["ratio"] = ratio
        print(
            f"\nbso / hello-world throughput: {results['bso']['rps']:.0f} / "
            f"{results['hello']['rps']:.0f} req/s = {ratio:.2f} (target >= 0.5 on PostgreSQL, "
            "1 worker; Zeus: about 0.06)"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return results


def main(argv: list[str] | None = None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()

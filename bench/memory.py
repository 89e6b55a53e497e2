"""Peak resident memory of the ``bso serve`` worker processes under the hot loop.

Reads ``VmHWM`` (the kernel's peak RSS) from ``/proc/<pid>/status`` of each
process that serves requests. With ``--workers 1`` uvicorn serves in the
``bso serve`` process itself; with more, that process is a supervisor and the
workers are its ``multiprocessing.spawn`` children (both are reported; the
target applies to a worker). Also shows each worker's RSS after start-up
(``VmRSS`` 2 s after /healthz first answers, before any /readyz and any
load), then after one GET /readyz (a worker's first /readyz imports Alembic
for the head revision: its cost), so the growth is visible step by step.
Before the load it sends ``--readyz-probes`` more GET /readyz on fresh
connections, as a readiness probe would, so that (almost surely) every
worker has answered one.

Examples::

    .venv/bin/python -m bench.memory
    .venv/bin/python -m bench.memory --db postgres --workers 2 --jobs 256
"""

from __future__ import annotations

import argparse
import time

import httpx

from bench.hotloop import Workload, measure
from bench.reporting import markdown_table
from bench.servers import bso_server, fresh_database, status_kib

TARGET_MIB = 130


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Peak RSS (VmHWM) of bso serve workers under the hot loop.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--db", choices=["postgres", "sqlite", "both"], default="both")
    parser.add_argument("--workers", default="1,2", help="worker counts to try")
    parser.add_argument("--jobs", type=int, default=64, help="virtual recurring jobs")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    parser.add_argument("--recurrences", type=int, default=6, help="recurrences per job")
    parser.add_argument(
        "--readyz-probes",
        type=int,
        default=16,
        help="GET /readyz this many times (fresh connections) before the load, "
        "as a readiness probe would (0: only the start-up check)",
    )
    args = parser.parse_args(argv)
    args.workers = [int(w) for w in args.workers.split(",")]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    databases = ["postgres", "sqlite"] if args.db == "both" else [args.db]
    rows, worst = [], 0.0
    for db in databases:
        for workers in args.workers:
            with fresh_database(db) as url:
                server = bso_server(url, workers=workers)
                server.ready_path = "/healthz"  # no /readyz before the first reading
                with server:
                    time.sleep(2)  # let every worker finish starting, not just the first
                    pids = server.worker_pids()
                    start = {pid: (status_kib(pid, "VmRSS") or 0) / 1024 for pid in pids}
                    # One /readyz: the worker that answers it imports Alembic.
                    httpx.get(server.url + "/readyz", timeout=10).raise_for_status()
                    time.sleep(0.5)
                    one = {pid: (status_kib(pid, "VmRSS") or 0) / 1024 for pid in pids}
                    # More, each on a fresh connection, as a readiness probe would,
                    # so that (almost surely) every worker has answered one.
                    for _ in range(args.readyz_probes):
                        httpx.get(server.url + "/readyz", timeout=10)
                    load = Workload(
                        jobs=args.jobs,
                        concurrency=args.concurrency,
                        recurrences=args.recurrences,
                        epochs=3,
                        warmup=0,
                        seeded=False,
                        target="bso",
                        prefix=f"mem{workers}",
                    )
                    result = measure(
                        f"{db}, {workers} worker(s)", server, server.url, load, 1, db, None, 60.0
                    )
            for name, peak in result["peak_rss_mib"].items():
                pid = int(name.split()[-1])
                role = name.split()[0]
                if role == "worker":
                    worst = max(worst, peak)
                before = f"{start[pid]:.1f}" if pid in start else "-"
                after = f"{one[pid]:.1f}" if pid in one else "-"
                rows.append([db, str(workers), role, before, after, f"{peak:.1f}"])
            print(
                f"{db}, {workers} worker(s): {result['requests']} requests, "
                f"{result['rps']:.0f} req/s, non-2xx: {result['non_2xx'] or 'none'}",
                flush=True,
            )
    print()
    header = [
        "database",
        "workers",
        "process",
        "RSS at start MiB (no /readyz yet)",
        "after one /readyz MiB",
        "peak under load MiB",
    ]
    print(markdown_table(header, rows))
    verdict = "meets" if worst <= TARGET_MIB else "MISSES"
    print(f"\nlargest worker peak: {worst:.1f} MiB ({verdict} the {TARGET_MIB} MiB target)")


if __name__ == "__main__":
    main()

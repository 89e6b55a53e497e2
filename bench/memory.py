"""Peak resident memory of the ``bso serve`` worker processes under the hot loop.

Reads ``VmHWM`` (the kernel's peak RSS) from ``/proc/<pid>/status`` of each
process that serves requests. With ``--workers 1`` uvicorn serves in the
``bso serve`` process itself; with more, that process is a supervisor and the
workers are its ``multiprocessing.spawn`` children (both are reported; the
target applies to a worker). Also shows each worker's RSS after start-up
(``VmRSS`` 2 s after /readyz first answers, before any load), so the growth
under load is visible. Before the load it sends ``--readyz-probes`` GET
/readyz on fresh connections, as a readiness probe would: a worker's first
/readyz imports Alembic for the head revision, so a worker that has answered
one is bigger; the last column says whether SQLAlchemy (which Alembic pulls
in, and which the request path never imports) is loaded in each process.

Examples::

    .venv/bin/python -m bench.memory
    .venv/bin/python -m bench.memory --db postgres --workers 2 --jobs 256
"""

from __future__ import annotations

import argparse
import time

import httpx

from bench.common import bso_server, fresh_database, markdown_table, status_kib
from bench.hotloop import Workload, measure

TARGET_MIB = 120


def sqlalchemy_mapped(pid: int) -> bool:
    """Whether SQLAlchemy's C extensions are loaded: Alembic (first /readyz) or migrations."""
    try:
        with open(f"/proc/{pid}/maps") as handle:
            return "/sqlalchemy/" in handle.read()
    except OSError:
        return False


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
            with fresh_database(db) as url, bso_server(url, workers=workers) as server:
                time.sleep(2)  # let every worker finish starting, not just the first
                idle = {pid: (status_kib(pid, "VmRSS") or 0) / 1024 for pid in server.worker_pids()}
                # A readiness probe's first /readyz in a worker loads Alembic (the
                # head revision). Probe like a deployment would, each on a fresh
                # connection, so that (almost surely) every worker has answered one.
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
                alembic_loaded = {
                    pid: sqlalchemy_mapped(pid) for pid in [*server.all_pids()[:1], *idle]
                }
            for name, peak in result["peak_rss_mib"].items():
                pid = int(name.split()[-1])
                role = name.split()[0]
                if role == "worker":
                    worst = max(worst, peak)
                start = f"{idle[pid]:.1f}" if pid in idle else "-"
                probed = "yes" if alembic_loaded.get(pid) else "no"
                rows.append([db, str(workers), role, start, f"{peak:.1f}", probed])
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
        "RSS at start MiB",
        "peak MiB",
        "SQLAlchemy loaded at end",
    ]
    print(markdown_table(header, rows))
    verdict = "meets" if worst <= TARGET_MIB else "MISSES"
    print(f"\nlargest worker peak: {worst:.1f} MiB ({verdict} the {TARGET_MIB} MiB target)")


if __name__ == "__main__":
    main()

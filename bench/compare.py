"""Hot loop, this checkout against another one (the driver path of 1b1cd18), in one run.

Both servers run at once, each from its own checkout with its own venv
(``<checkout>/.venv/bin/bso serve --workers W``), each on its own fresh
database migrated by its own migrations. The same hot-loop client
(bench.hotloop: its request mix, the lean RawClient) then drives them in
turn, ``--rounds`` times, the order flipped every round (new-old, old-new,
...), so that drift in the machine's speed and other processes' load hit
both alike. Every run uses new jobs (registration, 8 pruning and 4 bandit
recurrences each), so every run does the same work.

Printed per path: throughput (medians and per round), the ratio new/old
(per round and of the medians), worker CPU per request (``/proc`` of the
worker process), non-2xx answers, and the peak RSS (VmHWM) of the busiest
worker; optionally (``--hello``) the FastAPI hello-world ceiling in every
round too.

The other checkout needs its own venv, e.g. for the driver path::

    git worktree add --detach ../wt-old 1b1cd18
    cd ../wt-old && python3.11 -m venv .venv && .venv/bin/pip install -e '.[dev]'

Examples::

    .venv/bin/python -m bench.compare --old ../wt-old
    .venv/bin/python -m bench.compare --old ../wt-old --rounds 7 --hello --json /tmp/cmp.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.hotloop import Workload, measure
from bench.reporting import markdown_table
from bench.servers import ROOT, Server, bso_server, checkout_label, fresh_database, hello_server

RSS_TARGET_MIB = 130
RATIO_TARGET = 0.8


def python_version(python: Path) -> str:
    found = subprocess.run(
        [str(python), "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.strip() or "?"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Hot-loop throughput of this checkout against another, in one run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--old",
        type=Path,
        default=ROOT.parent / "wt-old",
        help="the other checkout (with its own .venv), e.g. a worktree of 1b1cd18",
    )
    parser.add_argument(
        "--new-python",
        type=Path,
        help="serve this checkout with this interpreter instead of .venv's "
        "(python -m app.cli; a venv with the dependencies), e.g. a Python 3.11 one "
        "so that both paths run on the same Python",
    )
    parser.add_argument("--rounds", type=int, default=5, help="runs of each path, alternating")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers, both servers")
    parser.add_argument("--jobs", type=int, default=64, help="virtual recurring jobs per run")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    parser.add_argument("--recurrences", type=int, default=12, help="measured recurrences per job")
    parser.add_argument("--epochs", type=int, default=3, help="reports per recurrence")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured recurrences first")
    parser.add_argument("--hello", action="store_true", help="the hello-world ceiling too")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=15.0,
        help="before each run wait up to this many seconds for other processes to go idle",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    old = args.old.resolve()
    if not (old / ".venv" / "bin" / "bso").exists():
        raise SystemExit(f"{old}/.venv/bin/bso not found: create the other checkout's venv first")
    new_python = args.new_python or Path(sys.executable)
    labels = {
        "new": f"new ({checkout_label(ROOT)}, Python {python_version(new_python)})",
        "old": f"old ({checkout_label(old)}, Python {python_version(old / '.venv/bin/python')})",
    }
    tag = f"cmp{os.getpid()}"
    base = Workload(
        jobs=args.jobs,
        concurrency=args.concurrency,
        recurrences=args.recurrences,
        epochs=args.epochs,
        warmup=args.warmup,
        seeded=False,
        target="bso",
        prefix=tag,
    )
    runs: dict[str, list[dict[str, Any]]] = {"new": [], "old": [], "hello": []}
    peaks: dict[str, dict[str, float]] = {}
    with contextlib.ExitStack() as stack:
        servers: dict[str, Server] = {}
        for key, checkout in (("new", ROOT), ("old", old)):
            url = stack.enter_context(
                fresh_database("postgres", prefix=f"bso_bench_{key}", checkout=checkout)
            )
            python = args.new_python if key == "new" else None
            servers[key] = stack.enter_context(
                bso_server(
                    url, workers=args.workers, checkout=checkout, name=f"bso-{key}", python=python
                )
            )
        hello = stack.enter_context(hello_server(workers=args.workers)) if args.hello else None
        print(
            f"servers up: new {servers['new'].url} (pid {servers['new'].worker_pids()}), "
            f"old {servers['old'].url} (pid {servers['old'].worker_pids()})",
            flush=True,
        )
        for round_ in range(args.rounds):
            order = ["new", "old"] if round_ % 2 == 0 else ["old", "new"]
            for key in order:
                work = replace(base, prefix=f"{tag}r{round_}{key}")
                server = servers[key]
                result = measure(
                    labels[key], server, server.url, work, 1, "postgres", None, args.quiet_wait
                )
                runs[key].append(result)
                print(
                    f"round {round_ + 1} {key}: {result['rps']:.0f} req/s, "
                    f"{result['server_cpu_ms_per_request']:.2f} ms CPU/request, "
                    f"other processes {result['cpu_cores']['other processes']:.2f} cores, "
                    f"non-2xx {result['non_2xx'] or 'none'}",
                    flush=True,
                )
            if hello is not None:
                work = replace(base, target="hello", prefix=f"{tag}r{round_}h")
                result = measure("hello", hello, hello.url, work, 1, None, None, args.quiet_wait)
                runs["hello"].append(result)
                print(f"round {round_ + 1} hello-world: {result['rps']:.0f} req/s", flush=True)
        for key in ("new", "old"):
            peaks[key] = servers[key].peak_rss_mib()

    rows = []
    ratios = []
    for round_, (new, old_run) in enumerate(zip(runs["new"], runs["old"], strict=True)):
        ratio = new["rps"] / old_run["rps"]
        ratios.append(ratio)
        row = [
            str(round_ + 1),
            "new first" if round_ % 2 == 0 else "old first",
            f"{new['rps']:.0f}",
            f"{old_run['rps']:.0f}",
            f"{ratio:.2f}",
            f"{new['server_cpu_ms_per_request']:.2f}",
            f"{old_run['server_cpu_ms_per_request']:.2f}",
            f"{max(r['cpu_cores']['other processes'] for r in (new, old_run)):.2f}",
        ]
        if runs["hello"]:
            row.append(f"{runs['hello'][round_]['rps']:.0f}")
        rows.append(row)
    header = [
        "round",
        "order",
        "new req/s",
        "old req/s",
        "new/old",
        "new CPU ms/req",
        "old CPU ms/req",
        "other procs (cores)",
    ]
    if runs["hello"]:
        header.append("hello req/s")
    print(
        f"\n## Hot loop, PostgreSQL, {args.workers} worker(s), {labels['new']} vs {labels['old']}"
    )
    print(markdown_table(header, rows))

    med = {k: _median([r["rps"] for r in v]) for k, v in runs.items()}
    cpu = {
        k: _median([r["server_cpu_ms_per_request"] for r in v])
        for k, v in runs.items()
        if k != "hello"
    }
    summary = [
        [
            labels[k],
            f"{med[k]:.0f}",
            f"{min(r['rps'] for r in runs[k]):.0f}-{max(r['rps'] for r in runs[k]):.0f}",
            f"{cpu[k]:.2f}",
            f"{max(peaks[k].values()):.1f}",
            str(sum(sum(r["non_2xx"].values()) for r in runs[k])),
        ]
        for k in ("new", "old")
    ]
    print()
    print(
        markdown_table(
            [
                "path",
                "median req/s",
                "range",
                "median worker CPU ms/request",
                "peak RSS of the busiest worker MiB",
                "non-2xx + errors",
            ],
            summary,
        )
    )
    ratio_of_medians = med["new"] / med["old"]
    print(
        f"\nnew/old throughput: median of the per-round ratios {_median(ratios):.2f} "
        f"(range {min(ratios):.2f}-{max(ratios):.2f}), ratio of the medians "
        f"{ratio_of_medians:.2f}; target >= {RATIO_TARGET}"
    )
    print(
        f"peak RSS of the new path's busiest worker: {max(peaks['new'].values()):.1f} MiB "
        f"(target <= {RSS_TARGET_MIB} MiB)"
    )
    if runs["hello"]:
        print(
            f"hello-world ceiling: median {med['hello']:.0f} req/s; new/hello "
            f"{med['new'] / med['hello']:.2f}, old/hello {med['old'] / med['hello']:.2f}"
        )
    for key in ("new", "old"):
        problems = [r["non_2xx"] for r in runs[key] if r["non_2xx"]]
        if problems:
            print(f"non-2xx answers of {key}: {problems}")
    if args.json:
        out = {
            "args": {k: str(v) for k, v in vars(args).items()},
            "labels": labels,
            "runs": runs,
            "peaks": peaks,
            "ratios": ratios,
            "time": time.time(),
        }
        args.json.write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()

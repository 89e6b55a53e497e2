"""What ``trial.report()`` of bso-client costs a training loop, beside a bare HTTP POST.

One training process's view: a real ``bso serve`` (one worker) on a fresh
database, and in this process the client running trials whose epochs do no
work, so that every millisecond measured is the client's: its wall time per
``trial.report()`` (one round trip to the server, plus the client's own
bookkeeping and meter reads) and this process's CPU per report. The same
bodies POSTed with a bare ``httpx.Client`` give the floor: what the round
trip alone costs. Energy meter "none" (time only), as on this CPU host.

Examples::

    .venv/bin/python -m bench.client_overhead
    .venv/bin/python -m bench.client_overhead --db postgres --trials 20 --epochs 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import httpx
from bso_client import BatchSizeOptimizer, EnergyWarning, JobSpec

from bench.servers import bso_server, fresh_database


def _ms(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"{statistics.median(values) * 1e3:.2f} ms median, {p99 * 1e3:.2f} ms p99"


def _client_reports(
    url: str, trials: int, epochs: int, job_id: str = "overhead-client"
) -> tuple[list[float], float]:
    """Wall time of every report, and this process's CPU per report."""
    spec = JobSpec(
        job_id=job_id, job_id_prefix="overhead", batch_sizes=[16, 32, 64],
        default_batch_size=32, target_metric=2.0, max_epochs=epochs + 1, beta_knob=None,
    )  # fmt: skip  # target never reached, no early stop: every trial runs every epoch
    walls: list[float] = []
    cpu = 0.0
    with BatchSizeOptimizer(job=spec, url=url, energy="none") as bso:
        for _ in range(trials):
            with bso.trial() as trial:
                for epoch in range(1, epochs + 1):
                    started, cpu_started = time.perf_counter(), time.process_time()
                    trial.report(metric=0.1 * epoch / epochs)
                    walls.append(time.perf_counter() - started)
                    cpu += time.process_time() - cpu_started
    return walls, cpu / len(walls)


def _bare_reports(url: str, trials: int, epochs: int) -> tuple[list[float], float]:
    """The same life with a bare httpx.Client: the round trip alone."""
    body = {
        "job_id": "overhead-bare", "job_id_prefix": "overhead", "batch_sizes": [16, 32, 64],
        "default_batch_size": 32, "target_metric": 2.0, "max_epochs": epochs + 1,
        "beta_knob": None, "max_power": 100.0, "number_of_gpus": 1, "gpu_model": "cpu",
    }  # fmt: skip
    walls: list[float] = []
    cpu = 0.0
    with httpx.Client(base_url=url, timeout=10.0) as http:
        http.post("/jobs", json=body).raise_for_status()
        for _ in range(trials):
            got = http.get("/jobs/batch_size", params={"job_id": "overhead-bare"}).json()
            for epoch in range(1, epochs + 1):
                report = {
                    **got, "time": 0.01 * epoch, "energy": 1.0 * epoch,
                    "metric": 0.1 * epoch / epochs, "current_epoch": epoch,
                }  # fmt: skip
                started, cpu_started = time.perf_counter(), time.process_time()
                http.post("/report", json=report).raise_for_status()
                walls.append(time.perf_counter() - started)
                cpu += time.process_time() - cpu_started
            http.patch("/trials", json=got)
    return walls, cpu / len(walls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    warnings.simplefilter("ignore", EnergyWarning)  # time only, on purpose
    load = os.getloadavg()[0]
    with fresh_database(args.db) as url, bso_server(url, workers=1) as server:
        _client_reports(
            server.url, 1, 2, "overhead-warm-up"
        )  # warm up: imports, connections, the job
        client, client_cpu = _client_reports(server.url, args.trials, args.epochs)
        bare, bare_cpu = _bare_reports(server.url, args.trials, args.epochs)
    print(f"load average before: {load:.2f}; {args.db}; {len(client)} reports each")
    print(f"bso_client trial.report(): {_ms(client)}; {client_cpu * 1e3:.2f} ms CPU per report")
    print(f"bare httpx POST /report:   {_ms(bare)}; {bare_cpu * 1e3:.2f} ms CPU per report")
    overhead = statistics.median(client) - statistics.median(bare)
    print(f"the client's own overhead: {overhead * 1e3:+.2f} ms median per report")


if __name__ == "__main__":
    main()

"""Capacity of one replica: how many training jobs ``bso serve`` serves with p99 < 100 ms.

A realistic load, not a hot loop. N recurring training jobs run at once,
each as Zeus's client drives the service: register (POST /jobs), dispatch
(GET /jobs/batch_size), one POST /report per epoch, end (PATCH /trials),
again. Each job replays a workload of the Zeus traces (the six of the paper,
in turn, on a V100 at its maximum power limit): its reports carry the trace's
cumulative time and energy of the batch size it was given, and it reports
once per epoch, an epoch lasting ``--period`` seconds times the trace's epoch
time of that batch size over the default batch size's (so a job on a larger
batch size reports as much faster as the trace says), +-10%. A trial
reaches its target after 10-30 epochs (uniform; the service may stop it
earlier, when its cost passes beta x the best); dispatches, final reports and
ends come in the proportion that makes. Jobs start at random times during the ramp, and a
job sends its next report on schedule, whatever the previous answer's
latency (it waits only for that answer): the offered rate does not drop
when the server slows down.

For each worker count (``--workers 1 2``: one worker, one pod of the
Deployment) the bench searches N: doubling from ``--start`` until a step
misses (p99 of all requests >= ``--p99-ms``, any non-2xx or connection
error, or the client itself late: 1% of its sends >= ``--p99-ms`` behind
schedule), then bisecting to
``--precision``. Each step is one fresh set of jobs on the same server: a
``--ramp`` of seconds unmeasured, then ``--duration`` seconds measured.
The capacity is the largest N that passed; printed with its request rate,
the server's CPU per request (``/proc`` of the supervisor and workers), the
cores it used, the peak RSS of each process, and the load average and
other processes' CPU during the step (this machine is shared: read them).

The server is ``bso serve --workers W`` exactly as deployed (BSO_AUTH=required
with a trainer token, log level WARNING) on a fresh PostgreSQL database;
the client is bench.load.RawClient in this process (on uvloop).

Examples::

    .venv/bin/python -m bench.capacity                       # 1 and 2 workers, T = 1 s
    .venv/bin/python -m bench.capacity --workers 2 --repeat 3 --json /tmp/capacity.json
    .venv/bin/python -m bench.capacity --workers 2 --jobs 300  # one step at N = 300
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.sim.traces import WORKLOADS, Case, build_case
from bench.load import RawClient, RawClientError, machine_cpu_seconds, wait_until_quiet
from bench.profiling import py_spy, summarize_stacks, top_frames
from bench.reporting import Recorder, latency_rows, machine_summary, markdown_table, percentiles_ms
from bench.servers import (
    VENV_BIN,
    Server,
    bso_server,
    cpu_seconds,
    fresh_database,
    postgres_cpu_seconds,
    status_kib,
)

ENDPOINTS = ("POST /jobs", "GET /jobs/batch_size", "POST /report", "PATCH /trials")
GPU = "v100"
PROFILE_RATE = 200  # py-spy samples per second
MIN_EPOCHS, MAX_EPOCHS = 10, 30


@dataclass(frozen=True)
class Load:
    jobs: int
    period: float  # seconds per epoch of a job's default batch size
    ramp: float
    duration: float
    prefix: str
    pool: int  # client connections


@dataclass
class Tally:
    """What one step recorded: latencies, sends and how late the sends were."""

    recorder: Recorder = field(default_factory=Recorder)
    sent: int = 0
    late_s: list[float] = field(default_factory=list)


def cases() -> list[Case]:
    return [build_case(workload, GPU) for workload in WORKLOADS]


def job_spec(job_id: str, prefix: str, case: Case) -> dict[str, Any]:
    workload = case.workload
    return {
        "job_id": job_id,
        "job_id_prefix": prefix,
        "batch_sizes": list(case.batch_sizes),
        "default_batch_size": case.default_batch_size,
        "eta_knob": 0.5,
        "beta_knob": 2.0,
        "target_metric": workload.target_metric,
        "higher_is_better_metric": workload.higher_is_better_metric,
        "max_epochs": MAX_EPOCHS,
        "num_pruning_rounds": 2,
        "window_size": 10,
        "mab_prior_mean": 0.0,
        "mab_prior_precision": 0.0,
        "mab_num_explorations": 2,
        "mab_seed": None,
        "max_power": case.max_power,
        "number_of_gpus": 1,
        "gpu_model": "NVIDIA V100",
    }


def metric(case: Case, epoch: int, reach: int) -> float:
    """Below the target before epoch ``reach``, at it from then on (either direction)."""
    target = case.workload.target_metric
    if case.workload.higher_is_better_metric:
        return target if epoch >= reach else target * epoch / (reach + 1)
    return target if epoch >= reach else target * (2.0 - epoch / reach)


class Job:
    """One recurring training job, replaying its trace case on a wall-clock schedule."""

    def __init__(self, index: int, case: Case, load: Load, tally: Tally, measure_from: float):
        self.rng = random.Random(index)
        self.case = case
        self.load = load
        self.tally = tally
        self.measure_from = measure_from
        self.job_id = f"{load.prefix}-{index:05d}"
        self.spec = job_spec(self.job_id, load.prefix, case)
        self.base_epoch = case.profiles[case.default_batch_size].time_per_epoch

    async def call(
        self, client: RawClient, label: str, method: str, path: str, due: float, **kw: Any
    ) -> Any:
        now = time.monotonic()
        if due > now:
            await asyncio.sleep(due - now)
        start = time.monotonic()
        measured = start >= self.measure_from
        if measured:
            self.tally.sent += 1
            self.tally.late_s.append(max(0.0, start - due))
        try:
            response = await client.request(method, path, **kw)
        except RawClientError as exc:
            if measured:
                self.tally.recorder.errors[f"{label} {str(exc)[:60]}"] += 1
            return None
        if measured:
            self.tally.recorder.add(label, time.monotonic() - start, response.status_code)
        return response

    async def run(self, client: RawClient, start: float, stop: float) -> None:
        due = start
        period = self.load.period
        while due < stop:
            await self.call(client, "POST /jobs", "POST", "/jobs", due, json=self.spec)
            found = await self.call(
                client,
                "GET /jobs/batch_size",
                "GET",
                "/jobs/batch_size",
                time.monotonic(),
                params={"job_id": self.job_id},
            )
            if found is None or found.status_code != 200:
                due = time.monotonic() + period
                continue
            body = found.json()
            batch_size, trial_number = body["batch_size"], body["trial_number"]
            trial = {"job_id": self.job_id, "batch_size": batch_size, "trial_number": trial_number}
            profile = self.case.profiles[batch_size]
            interval = period * profile.time_per_epoch / self.base_epoch
            reach = self.rng.randint(MIN_EPOCHS, MAX_EPOCHS)
            due = time.monotonic()
            for epoch in range(1, MAX_EPOCHS + 1):
                due += interval * self.rng.uniform(0.9, 1.1)
                if due >= stop:
                    return
                report = {
                    **trial,
                    "time": profile.time_per_epoch * epoch,
                    "energy": profile.energy_per_epoch * epoch,
                    "metric": metric(self.case, epoch, reach),
                    "current_epoch": epoch,
                }
                answer = await self.call(
                    client, "POST /report", "POST", "/report", due, json=report
                )
                if answer is not None and answer.status_code == 200 and answer.json()["stop_train"]:
                    break
            await self.call(
                client, "PATCH /trials", "PATCH", "/trials", time.monotonic(), json=trial
            )
            due = time.monotonic() + period  # the next run of the recurring job


async def drive(url: str, token: str, load: Load) -> dict[str, Any]:
    """Run N jobs for ramp + duration seconds; return what the measured part recorded."""
    tally = Tally()
    all_cases = cases()
    begin = time.monotonic() + 1.0
    measure_from = begin + load.ramp
    stop = measure_from + load.duration
    headers = {"authorization": f"Bearer {token}"}
    async with RawClient(url, load.pool, headers=headers) as client:
        jobs = [
            Job(i, all_cases[i % len(all_cases)], load, tally, measure_from)
            for i in range(load.jobs)
        ]
        phases = random.Random(load.jobs)
        cpu0 = cpu_seconds(os.getpid())
        await asyncio.gather(
            # Start times spread over the ramp: by its end trials are at every stage.
            *(job.run(client, begin + phases.uniform(0, load.ramp), stop) for job in jobs)
        )
        client_cpu = cpu_seconds(os.getpid()) - cpu0
    return {"tally": tally, "client_cpu": client_cpu, "measured_s": load.duration}


def _run(coroutine: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def step(
    server: Server, token: str, load: Load, p99_limit_ms: float, profile: str | None = None
) -> dict[str, Any]:
    """One step at N = load.jobs: the numbers of its measured part, and whether it passed."""
    load_avg0 = os.getloadavg()
    server0, pg0, machine0 = server.cpu_seconds(), postgres_cpu_seconds(), machine_cpu_seconds()
    wall0 = time.monotonic()
    stacks: list[str] = []
    if profile:
        worker = server.worker_pids()[0]
        worker_cpu0 = cpu_seconds(worker)
        with py_spy(server.worker_pids(), profile, rate=PROFILE_RATE) as stacks:
            result = _run(drive(server.url, token, load))
        busy = (cpu_seconds(worker) - worker_cpu0) * PROFILE_RATE
    else:
        result = _run(drive(server.url, token, load))
    wall = time.monotonic() - wall0
    server_cpu = server.cpu_seconds() - server0
    pg_cpu = postgres_cpu_seconds() - pg0
    machine = machine_cpu_seconds() - machine0
    load_avg1 = os.getloadavg()
    tally: Tally = result["tally"]
    rec = tally.recorder
    everything = [v for values in rec.latencies.values() for v in values]
    p50, p95, p99 = percentiles_ms(everything)
    served = rec.count / result["measured_s"]
    offered = tally.sent / result["measured_s"]
    # CPU over the whole step (ramp included) per request of the whole step:
    # the ramp sends at the same rate, so scale by the measured share.
    share = result["measured_s"] / wall
    requests_whole = rec.count / share if share else rec.count
    other = max(0.0, machine - server_cpu - pg_cpu - result["client_cpu"]) / wall
    problems = rec.non_2xx()
    late_p99 = percentiles_ms(tally.late_s, (99,))[0]
    # Late sends mean the client (on the same cores) could not keep the schedule:
    # the step did not offer the load it meant to.
    passed = p99 < p99_limit_ms and not problems and late_p99 < p99_limit_ms
    if stacks:
        print(f"\nprofile of worker {stacks[0]} (py-spy {PROFILE_RATE} Hz, whole step):")
        shares = summarize_stacks(stacks[0], busy)
        print(markdown_table(["where", "share of busy"], [[k, f"{v:.1%}"] for k, v in shares]))
        top = top_frames(stacks[0], 20)
        print(markdown_table(["function", "self"], [[k, f"{v:.1%}"] for k, v in top]))
    return {
        "jobs": load.jobs,
        "period_s": load.period,
        "requests": rec.count,
        "offered_rps": offered,
        "served_rps": served,
        "p50_ms": p50,
        "p95_ms": p95,
        "p99_ms": p99,
        "max_ms": max(everything) * 1000 if everything else float("nan"),
        "late_p99_ms": late_p99,
        "latency_rows": latency_rows(rec, ENDPOINTS),
        "mix": {e: len(v) for e, v in rec.latencies.items()},
        "non_2xx": problems,
        "server_cpu_ms_per_request": 1000 * server_cpu / max(requests_whole, 1),
        "cores": {
            "server": server_cpu / wall,
            "postgres": pg_cpu / wall,
            "client": result["client_cpu"] / wall,
            "other processes": other,
        },
        "load_average": [round(load_avg0[0], 2), round(load_avg1[0], 2)],
        "rss_mib": {
            name: kib / 1024
            for name, kib in ((f"pid {pid}", status_kib(pid, "VmRSS")) for pid in server.all_pids())
            if kib is not None
        },
        # Proportional set size: shared pages split between the processes, so the
        # sum is close to what the pod's memory cgroup charges.
        "pss_mib_sum": sum(pss_kib(pid) for pid in server.all_pids()) / 1024,
        "passed": passed,
    }


def pss_kib(pid: int) -> int:
    """Proportional set size of a process (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


def describe(s: dict[str, Any]) -> str:
    mark = "pass" if s["passed"] else "MISS"
    cores = ", ".join(f"{k} {v:.2f}" for k, v in s["cores"].items())
    return (
        f"  N={s['jobs']:>5}: {mark}  offered {s['offered_rps']:.0f} req/s, served "
        f"{s['served_rps']:.0f}; p50 {s['p50_ms']:.1f} p95 {s['p95_ms']:.1f} p99 "
        f"{s['p99_ms']:.1f} ms (sends late p99 {s['late_p99_ms']:.0f}); "
        f"server CPU {s['server_cpu_ms_per_request']:.2f} ms/req; "
        f"cores: {cores}; load avg {s['load_average'][0]}->{s['load_average'][1]}; "
        f"PSS of the server's processes {s['pss_mib_sum']:.0f} MiB"
        + (f"; non-2xx {s['non_2xx']}" if s["non_2xx"] else "")
    )


def create_token(database_url: str) -> str:
    """A trainer token, made with ``bso tokens create`` as an operator would."""
    made = subprocess.run(
        [str(VENV_BIN / "bso"), "tokens", "create", f"bench{os.getpid()}", "--role", "trainer"],
        env={**os.environ, "BSO_DATABASE_URL": database_url, "BSO_LOG_LEVEL": "WARNING"},
        capture_output=True,
        text=True,
        check=True,
    )
    return made.stdout.strip().splitlines()[-1]


def search(server: Server, token: str, args: argparse.Namespace, tag: str) -> dict[str, Any]:
    """Double N until a step misses, then bisect; every step uses new jobs."""
    steps: list[dict[str, Any]] = []

    def at(n: int) -> dict[str, Any]:
        if args.quiet_wait:
            wait_until_quiet(args.quiet_wait)
        load = Load(n, args.period, args.ramp, args.duration, f"{tag}n{n}s{len(steps)}", args.pool)
        result = step(server, token, load, args.p99_ms, args.profile)
        steps.append(result)
        print(describe(result), flush=True)
        return result

    if args.jobs:
        at(args.jobs)
        good = args.jobs if steps[-1]["passed"] else 0
        return {"steps": steps, "capacity_jobs": good}
    good, bad = 0, 0
    n = args.start
    while n <= args.max_jobs:
        if at(n)["passed"]:
            good, n = n, n * 2
        else:
            bad = n
            break
    while bad and not good and bad > 2:  # the first step missed: halve until one passes
        n = bad // 2
        if at(n)["passed"]:
            good = n
        else:
            bad = n
    if not bad:
        print(f"  (no miss up to --max-jobs {args.max_jobs})")
    while bad and good and (bad - good) > max(1, args.precision * good):
        middle = (good + bad) // 2
        if at(middle)["passed"]:
            good = middle
        else:
            bad = middle
    return {"steps": steps, "capacity_jobs": good}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Concurrent training jobs one bso replica serves with p99 under a limit.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts")
    parser.add_argument(
        "--period",
        type=float,
        default=1.0,
        help="seconds per epoch of a job on its default batch size (the traces' epoch "
        "times scaled to it); the capacity in jobs scales with it",
    )
    parser.add_argument("--p99-ms", type=float, default=100.0, help="latency limit, all requests")
    parser.add_argument("--start", type=int, default=50, help="first N of the search")
    parser.add_argument("--max-jobs", type=int, default=6400, help="stop doubling here")
    parser.add_argument(
        "--precision", type=float, default=0.1, help="bisect until within this fraction"
    )
    parser.add_argument("--jobs", type=int, help="one step at this N instead of a search")
    parser.add_argument(
        "--ramp",
        type=float,
        default=15.0,
        help="unmeasured seconds per step (jobs start during it)",
    )
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per step")
    parser.add_argument(
        "--pool",
        type=int,
        default=64,
        help="client keep-alive connections (few enough that none idles past uvicorn's "
        "5 s keep-alive timeout)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="searches per worker count")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="before each step wait up to this many seconds for other processes to go idle",
    )
    parser.add_argument(
        "--profile",
        metavar="PREFIX",
        help="sample the workers with py-spy (pip install py-spy) into PREFIX.<pid>.txt "
        "during every step and print where the first worker's time goes",
    )
    parser.add_argument("--json", type=Path, help="also write every step here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    tag = f"cap{os.getpid()}"
    print(f"machine: {machine_summary()}; load average now {os.getloadavg()[0]:.2f}")
    print(
        f"load: jobs replay {', '.join(w.dataset for w in WORKLOADS)} on {GPU}; epoch of the "
        f"default batch size every {args.period} s; {MIN_EPOCHS}-{MAX_EPOCHS} epochs a trial; "
        f"pass = p99 < {args.p99_ms} ms, no error or non-2xx, "
        f"sends late by < {args.p99_ms} ms at p99"
    )
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": []}
    summary = []
    for workers in args.workers:
        for attempt in range(args.repeat):
            with fresh_database("postgres", prefix="bso_bench_cap") as url:
                token = create_token(url)
                server = bso_server(url, workers=workers)
                server.env["BSO_AUTH"] = "required"
                with server:
                    print(f"\n## bso serve --workers {workers} (run {attempt + 1})", flush=True)
                    found = search(server, token, args, f"{tag}w{workers}r{attempt}")
                    peaks = server.peak_rss_mib()
            found.update(workers=workers, attempt=attempt + 1, peak_rss_mib=peaks)
            results["runs"].append(found)
            best = [s for s in found["steps"] if s["jobs"] == found["capacity_jobs"]]
            if best:
                b = best[-1]
                summary.append(
                    [
                        str(workers),
                        str(attempt + 1),
                        str(b["jobs"]),
                        f"{b['served_rps']:.0f}",
                        f"{b['p50_ms']:.1f}",
                        f"{b['p99_ms']:.1f}",
                        f"{b['server_cpu_ms_per_request']:.2f}",
                        f"{b['cores']['server']:.2f}",
                        f"{b['cores']['postgres']:.2f}",
                        f"{b['cores']['other processes']:.2f}",
                        f"{b['load_average'][0]}-{b['load_average'][1]}",
                        f"{sum(peaks.values()):.0f}",
                    ]
                )
                print(f"\ncapacity: {b['jobs']} jobs; at it:")
                print(
                    markdown_table(
                        ["endpoint", "n", "p50 ms", "p95 ms", "p99 ms", "max ms"],
                        b["latency_rows"],
                    )
                )
            rss = ", ".join(f"{k} {v:.1f}" for k, v in peaks.items())
            print(f"peak RSS (VmHWM) MiB: {rss}; sum {sum(peaks.values()):.1f}")
    print(f"\n## Capacity at p99 < {args.p99_ms:.0f} ms, epoch every {args.period} s")
    print(
        markdown_table(
            [
                "workers",
                "run",
                "jobs",
                "req/s",
                "p50 ms",
                "p99 ms",
                "server CPU ms/req",
                "server cores",
                "postgres cores",
                "other procs cores",
                "load avg",
                "peak RSS sum MiB",
            ],
            summary,
        )
    )
    for workers in args.workers:
        got = [r["capacity_jobs"] for r in results["runs"] if r["workers"] == workers]
        steps = [s for r in results["runs"] if r["workers"] == workers for s in r["steps"]]
        if not got:
            continue
        print(
            f"workers {workers}: capacity median {statistics.median(got):.0f} jobs "
            f"(runs: {got}) at one epoch per {args.period} s per job"
        )
        # The CPU the server spends per request moves little with other processes'
        # load, unlike latency: what W dedicated cores would serve if CPU-bound.
        cpu = statistics.median(s["server_cpu_ms_per_request"] for s in steps)
        print(
            f"  server CPU per request, median of {len(steps)} steps: {cpu:.2f} ms; "
            f"{workers} dedicated core(s) at 100% would serve {workers * 1000 / cpu:.0f} req/s"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()

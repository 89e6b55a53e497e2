"""Both policies on a real, noisy training job: its own ground truth, then the service.

    .venv-3.11/bin/python -m bench.real_training                      # ~2.5 min of CPU
    .venv-3.11/bin/python -m bench.real_training --job-seeds 1,2,3    # docs/benchmarks.md
    .venv-3.11/bin/python -m bench.real_training --recurrences 10 --betas 2
    .venv-3.11/bin/python -m bench.real_training --ground-truth-only --seeds 8
    .venv-3.11/bin/python -m bench.real_training --server-code /tmp/old   # another checkout's app

The job (needs torch: the Python 3.11 venv, ``ensure_training_packages``): a
32-64-10 MLP trained with plain SGD (lr 0.1) on 20,000 generated samples (a
random linear teacher, 10% of the labels flipped; 2,000 more to validate),
single-threaded, until the validation accuracy reaches the target. The data is
the same in every run; the model's initialisation and the shuffling follow the
run's seed. Cost is the training process's CPU seconds (training and
validation only, the client's calls excluded), so that other load on the
machine moves it little; it is reported as ``time`` with ``energy = 100 W x
time``, so the service's cost is 100 x CPU seconds at any eta.

1. **Ground truth**: every batch size trained ``--seeds`` times without the
   service, to the target or ``max_epochs``: epochs and cost to the target,
   and the expected cost of a recurrence that retries until a run reaches it
   (mean cost of a run / share of runs that reach it). The oracle is the
   cheapest batch size by that measure.
2. **The service**: a ``bso serve`` (SQLite in a temporary folder) and, per
   policy and ``beta_knob``, one job driven through ``bso_client`` for
   ``--recurrences`` recurrences. A recurrence retries a run that did not reach
   the target, up to ``--max-tries`` runs; every run's cost counts. Every job
   gets the same seeds (``mab_seed`` and each run's training seed, by
   recurrence and try), so two policies that ask for the same batch size train
   the same run.

Per policy and beta it prints: cost over the oracle's and over always using
the default (each times the recurrences), runs per recurrence, early stops of
the oracle batch size (stopped by the service, not converged, before
``max_epochs``), early stops of runs that would have reached the target (a
stopped run of a batch size that reaches it in at least half its ground-truth
runs trains on, uncounted and unreported, to find out), recurrences that
ended without a model (no run reached the target, or the service refused a
batch size: the paper's dead end), and the batch size the job settled on
(most frequent over the last third). ``--server-code`` serves another
checkout's ``app`` (the code before a change) to the same client and job.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from bso_client import BatchSizeOptimizer, BSORejectedError, EnergyWarning, JobSpec, Trial

MAX_POWER = 100.0  # watts: energy = MAX_POWER x CPU seconds, so cost = 100 x CPU seconds
COST_PER_SECOND = MAX_POWER  # eta * energy + (1 - eta) * max_power * time, at any eta


@dataclass(frozen=True, slots=True)
class Task:
    """What is trained, and the job's knobs that do not vary between runs."""

    features: int = 32
    hidden: int = 64
    classes: int = 10
    train_size: int = 20_000
    val_size: int = 2_000
    label_noise: float = 0.1
    learning_rate: float = 0.1
    data_seed: int = 2021
    batch_sizes: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
    default_batch_size: int = 32
    target: float = 0.81
    max_epochs: int = 12


@dataclass(frozen=True, slots=True)
class Data:
    train_x: Any
    train_y: Any
    val_x: Any
    val_y: Any


@dataclass(frozen=True, slots=True)
class Run:
    """One training run: where it stopped, what it cost, whether it reached the target."""

    batch_size: int
    seed: int
    epochs: int
    cpu_seconds: float
    reached_epoch: int | None  # the first epoch at or above the target
    # After a stop before the target: the epoch it would have reached it at (None: not
    # within max_epochs), trained on uncounted (``train(..., counterfactual=True)``).
    would_reach: int | None = None

    @property
    def cost(self) -> float:
        return COST_PER_SECOND * self.cpu_seconds


def setup_torch() -> Any:
    import torch

    torch.set_num_threads(1)
    with contextlib.suppress(RuntimeError):  # already set in this process
        torch.set_num_interop_threads(1)
    return torch


def make_data(task: Task) -> Data:
    """Generated, the same for every run: a linear teacher's labels, some flipped."""
    torch = setup_torch()
    g = torch.Generator().manual_seed(task.data_seed)
    n = task.train_size + task.val_size
    x = torch.randn(n, task.features, generator=g)
    y = (x @ torch.randn(task.features, task.classes, generator=g)).argmax(dim=1)
    flip = torch.rand(n, generator=g) < task.label_noise
    y = torch.where(flip, torch.randint(0, task.classes, (n,), generator=g), y)
    t = task.train_size
    return Data(x[:t], y[:t], x[t:], y[t:])


def train(
    task: Task,
    data: Data,
    batch_size: int,
    seed: int,
    on_epoch: Callable[[int, float, float], bool],
    *,
    counterfactual: bool = False,
) -> Run:
    """Train epoch by epoch until ``on_epoch(epoch, accuracy, cpu_seconds)`` says stop.

    ``cpu_seconds`` is cumulative and counts only training and validation.
    ``counterfactual``: a run stopped before the target trains on, uncounted and
    unreported, to find out whether it would have reached it (``Run.would_reach``).
    """
    torch = setup_torch()
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(task.features, task.hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(task.hidden, task.classes),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=task.learning_rate)
    loss_of = torch.nn.functional.cross_entropy

    def one_epoch() -> float:
        model.train()
        order = torch.randperm(task.train_size)
        for start in range(0, task.train_size, batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad()
            loss_of(model(data.train_x[batch]), data.train_y[batch]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            return float((model(data.val_x).argmax(dim=1) == data.val_y).float().mean())

    cpu, reached, epoch = 0.0, None, 0
    for epoch in range(1, task.max_epochs + 1):
        started = time.process_time()
        accuracy = one_epoch()
        cpu += time.process_time() - started
        if reached is None and accuracy >= task.target:
            reached = epoch
        if on_epoch(epoch, accuracy, cpu):
            break
    would_reach = None
    if counterfactual and reached is None:
        for later in range(epoch + 1, task.max_epochs + 1):
            if one_epoch() >= task.target:
                would_reach = later
                break
    return Run(batch_size, seed, epoch, cpu, reached, would_reach)


# ---------------------------------------------------------------- ground truth


@dataclass(frozen=True, slots=True)
class Truth:
    """One batch size's runs without the service, each to the target or max_epochs."""

    batch_size: int
    runs: tuple[Run, ...]

    @property
    def reached(self) -> list[Run]:
        return [r for r in self.runs if r.reached_epoch is not None]

    @property
    def epoch_price(self) -> float:
        """The mean cost of one of its epochs over these runs."""
        return sum(r.cost for r in self.runs) / sum(r.epochs for r in self.runs)

    @property
    def expected_cost(self) -> float:
        """A recurrence's cost retrying until a run reaches the target (inf: none did)."""
        if not self.reached:
            return float("inf")
        share = len(self.reached) / len(self.runs)
        return statistics.fmean(r.cost for r in self.runs) / share


def ground_truth(task: Task, data: Data, seeds: Sequence[int]) -> dict[int, Truth]:
    truths = {}
    for bs in task.batch_sizes:
        runs = []
        for seed in seeds:
            runs.append(
                train(task, data, bs, 1_000_000 + seed, lambda _e, acc, _c: acc >= task.target)
            )
        truths[bs] = Truth(bs, tuple(runs))
        print(f"  ground truth {bs}: {truth_cells(truths[bs])}", file=sys.stderr, flush=True)
    return truths


def oracle_of(truths: dict[int, Truth]) -> Truth:
    return min(truths.values(), key=lambda t: t.expected_cost)


def truth_cells(t: Truth) -> list[str]:
    epochs = [r.reached_epoch for r in t.reached]
    costs = [r.cost for r in t.reached]
    return [
        str(t.batch_size),
        f"{len(t.reached)}/{len(t.runs)}",
        ", ".join(str(r.reached_epoch or "-") for r in t.runs),
        f"{statistics.fmean(e for e in epochs if e):.1f}" if epochs else "-",
        f"{statistics.fmean(costs):.1f}" if costs else "-",
        f"{t.expected_cost:.1f}",
    ]


# ---------------------------------------------------------------- the service


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ``bso`` of a checkout on PYTHONPATH: app.cli.main (a package, issue 19's layout) or app.cli.
_OTHER_BSO = (
    "import importlib, sys\n"
    "try:\n    m = importlib.import_module('app.cli.main').main\n"
    "except ModuleNotFoundError:\n    m = importlib.import_module('app.cli').main\n"
    "sys.argv[0] = 'bso'\nsys.exit(m())"
)


@contextlib.contextmanager
def bso_serve(code: Path | None = None) -> Iterator[str]:
    """``bso serve`` of this venv on a fresh SQLite database; yields its URL.

    ``code``: serve that checkout's ``app`` instead (first on ``PYTHONPATH``),
    to measure the service before a change with the same client and job.
    """
    bso = [str(Path(sys.executable).parent / "bso")]
    if code is not None:  # that checkout's own entry point, whichever module holds it
        bso = [sys.executable, "-c", _OTHER_BSO]
    with tempfile.TemporaryDirectory(prefix="bso-real-") as folder:
        env = {
            **os.environ,
            "BSO_DATABASE_URL": f"sqlite+aiosqlite:///{folder}/bso.db",
            "BSO_LOG_LEVEL": "WARNING",
        }
        if code is not None:
            env["PYTHONPATH"] = str(code.resolve())
        # From the temporary folder: ``python -c`` puts the working directory first on
        # sys.path, where this checkout's ``app`` would shadow ``code``'s.
        migrated = subprocess.run([*bso, "migrate"], env=env, cwd=folder, capture_output=True)
        if migrated.returncode != 0:
            raise RuntimeError(migrated.stderr.decode(errors="replace"))
        port = free_port()
        with open(Path(folder) / "server.log", "wb") as log:
            server = subprocess.Popen(
                [*bso, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                env=env,
                cwd=folder,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                        break
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((Path(folder) / "server.log").read_text(errors="replace"))
                time.sleep(0.2)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=30)


@dataclass(frozen=True, slots=True)
class Try:
    """One run of a recurrence as the service directed it.

    ``refused``: the service gave no batch size (the paper's dead end, a 409):
    an older client raised (batch size None, no run), a newer one trains at the
    default without the service (``trial.fallback``).
    """

    recurrence: int
    attempt: int
    batch_size: int | None
    epochs: int = 0
    cost: float = 0.0
    reached: bool = False
    converged: bool = False
    stopped_early: bool = False  # by the service, not converged, before max_epochs
    message: str = ""
    would_reach: int | None = None  # a stopped run's epoch of the target, trained on uncounted
    refused: bool = False


@dataclass(slots=True)
class Job:
    """One policy and beta_knob over the recurrences."""

    policy: str
    beta: float
    tries: list[Try] = field(default_factory=list)
    job_id: str = ""


def reporter(trial: Trial) -> Callable[[int, float, float], bool]:
    """Report each epoch's accuracy and CPU seconds; stop when the service says so."""

    def on_epoch(_epoch: int, accuracy: float, cpu: float) -> bool:
        return bool(trial.report(accuracy, time=cpu, energy=MAX_POWER * cpu).stop)

    return on_epoch


def train_seed(seed: int, recurrence: int, attempt: int) -> int:
    return seed * 100_000 + recurrence * 100 + attempt


def drive(
    url: str,
    task: Task,
    data: Data,
    *,
    policy: str,
    beta: float,
    recurrences: int,
    max_tries: int,
    seed: int,
    worth_finishing: frozenset[int] = frozenset(),
) -> Job:
    """``worth_finishing``: the batch sizes whose stopped runs are trained on, uncounted,
    to see whether the stop defeated a run that would have reached the target."""
    job = Job(policy, beta, job_id=f"real-{policy}-{beta}-{uuid.uuid4().hex[:8]}")
    spec = JobSpec(
        job_id_prefix="real", job_id=job.job_id, batch_sizes=task.batch_sizes,
        default_batch_size=task.default_batch_size, beta_knob=beta, target_metric=task.target,
        max_epochs=task.max_epochs, mab_seed=seed, policy=policy, max_power=MAX_POWER,
        number_of_gpus=1, gpu_model="cpu",
    )  # fmt: skip
    with BatchSizeOptimizer(spec, url=url, energy="none", on_unavailable="raise") as bso:
        for recurrence in range(1, recurrences + 1):
            for attempt in range(1, max_tries + 1):
                try:
                    trial = bso.trial()
                except BSORejectedError as exc:  # the paper's dead end: no batch size
                    job.tries.append(Try(recurrence, attempt, None, message=str(exc),
                                         refused=True))  # fmt: skip
                    break
                with trial:
                    run = train(task, data, trial.batch_size,
                                train_seed(seed, recurrence, attempt), reporter(trial),
                                counterfactual=trial.batch_size in worth_finishing)  # fmt: skip
                decision = trial.decision
                converged = decision is not None and decision.converged
                reached = run.reached_epoch == run.epochs  # the model it ends with
                early = not converged and not trial.fallback and run.epochs < task.max_epochs
                job.tries.append(Try(
                    recurrence, attempt, run.batch_size, run.epochs, run.cost, reached, converged,
                    early, decision.message if decision is not None else "", run.would_reach,
                    trial.fallback,
                ))  # fmt: skip
                if reached:
                    break
    return job


# ---------------------------------------------------------------- summary


def settled_on(job: Job, recurrences: int) -> str:
    """The most frequent batch size of the last third's runs (ties: all of them)."""
    first = recurrences - max(1, recurrences // 3)
    last = [t.batch_size for t in job.tries if t.recurrence > first]
    counts = Counter(bs for bs in last if bs is not None)
    if not counts:
        return "-"
    top = max(counts.values())
    return "/".join(str(bs) for bs, n in sorted(counts.items()) if n == top)


def job_cells(
    jobs: Sequence[Job], truths: dict[int, Truth], task: Task, recurrences: int
) -> list[str]:
    """One row: a policy and beta over its jobs (one per seed); costs are means over them."""
    oracle = oracle_of(truths)
    default = truths[task.default_batch_size].expected_cost
    tries = [t for job in jobs for t in job.tries]
    spent = [sum(t.cost for t in job.tries) / recurrences for job in jobs]
    # Every run's epochs at its batch size's ground-truth price: what the service's decisions
    # cost without the CPU's drift between the ground truth's window and the jobs'.
    priced = [
        sum(t.epochs * truths[t.batch_size].epoch_price for t in job.tries
            if t.batch_size is not None) / recurrences
        for job in jobs
    ]  # fmt: skip
    no_model = sum(
        1 for job in jobs for r in range(1, recurrences + 1)
        if not any(t.reached for t in job.tries if t.recurrence == r)
    )  # fmt: skip
    best = [t for t in tries if t.batch_size == oracle.batch_size]
    early = [t for t in tries if t.stopped_early]
    defeated = Counter(t.batch_size for t in early if t.would_reach is not None)
    by_size = ", ".join(f"{bs}: {n}" for bs, n in sorted(defeated.items()))
    ratios = [c / oracle.expected_cost for c in spent]
    spread = f" ({min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else ""
    at_prices = [c / oracle.expected_cost for c in priced]
    at_spread = f" ({min(at_prices):.2f}-{max(at_prices):.2f})" if len(at_prices) > 1 else ""
    return [
        jobs[0].policy,
        f"{jobs[0].beta:g}",
        f"{statistics.fmean(ratios):.3f}{spread}",
        f"{statistics.fmean(at_prices):.3f}{at_spread}",
        f"{statistics.fmean(spent) / default:.3f}",
        f"{sum(1 for t in tries if t.batch_size is not None) / (recurrences * len(jobs)):.2f}",
        f"{sum(1 for t in best if t.stopped_early)}/{len(best)}",
        f"{sum(defeated.values())}/{len(early)}" + (f" ({by_size})" if by_size else ""),
        str(no_model),
        str(sum(1 for t in tries if t.refused)),
        ", ".join(settled_on(job, recurrences) for job in jobs),
    ]


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


TRUTH_HEADER = ("batch size", "reached", "epochs to target by seed", "mean epochs",
                "mean cost to target", "expected cost per recurrence")  # fmt: skip
JOB_HEADER = ("policy", "beta", "cost / oracle", "cost / oracle, epochs at ground-truth prices",
              "cost / default", "runs per recurrence",
              "early stops of the oracle batch size",
              "early stops of runs that would have reached the target (by batch size)",
              "recurrences without a model",
              "refused dispatches", "settled on")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--recurrences", type=int, default=25)
    parser.add_argument("--max-tries", type=int, default=3, help="runs per recurrence at most")
    parser.add_argument("--seeds", type=int, default=4, help="ground-truth runs per batch size")
    parser.add_argument("--job-seeds", default="1",
                        help="one job per seed and policy and beta: its mab_seed and its runs' "
                        "training seeds (comma-separated; default 1)")  # fmt: skip
    parser.add_argument("--policies", default="zeus,predictive")
    parser.add_argument("--betas", default="1.5,2,3")
    parser.add_argument("--ground-truth-only", action="store_true")
    parser.add_argument("--server-code", type=Path, help="serve this checkout's app instead")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", EnergyWarning)  # energy is given: 100 W x CPU seconds
    task = Task()
    data = make_data(task)
    started = time.perf_counter()
    cpu_started = time.process_time()
    truths = ground_truth(task, data, range(1, args.seeds + 1))
    oracle = oracle_of(truths)
    default = truths[task.default_batch_size]
    out = [
        f"Ground truth: {args.seeds} runs per batch size (training seeds 1000001-"
        f"{1_000_000 + args.seeds}), target {task.target}, max_epochs {task.max_epochs}; "
        f"cost = 100 x CPU seconds.",
        "",
        markdown(TRUTH_HEADER, [truth_cells(t) for t in truths.values()]),
        "",
        f"Oracle: {oracle.batch_size}; the default {task.default_batch_size} costs "
        f"{default.expected_cost / oracle.expected_cost:.2f}x per recurrence.",
    ]
    print("\n".join(out), flush=True)
    if args.ground_truth_only:
        return 0
    # Stopped runs of these train on uncounted: half their ground-truth runs reach the target.
    worth_finishing = frozenset(bs for bs, t in truths.items() if 2 * len(t.reached) >= len(t.runs))
    seeds = [int(seed) for seed in args.job_seeds.split(",")]
    configs = [(p, float(b)) for p in args.policies.split(",") for b in args.betas.split(",")]
    jobs: dict[tuple[str, float], list[Job]] = {config: [] for config in configs}
    with bso_serve(args.server_code) as url:
        for seed in seeds:  # every configuration once per seed: a partial run is still even
            for policy, beta in configs:
                job = drive(url, task, data, policy=policy, beta=beta,
                            recurrences=args.recurrences, max_tries=args.max_tries,
                            seed=seed, worth_finishing=worth_finishing)  # fmt: skip
                jobs[policy, beta].append(job)
                sequence = " ".join(str(t.batch_size) + ("" if t.reached else "x")
                                    for t in job.tries)  # fmt: skip
                cells = " | ".join(job_cells([job], truths, task, args.recurrences))
                print(f"  {job.job_id} seed {seed}: | {cells} |\n    runs: {sequence}",
                      file=sys.stderr, flush=True)  # fmt: skip
    rows = [job_cells(jobs[config], truths, task, args.recurrences) for config in configs]
    print()
    print(
        f"{args.recurrences} recurrences per job, at most {args.max_tries} runs each, job "
        f"seeds {args.job_seeds}, eta 0.5, window 0, 2 pruning rounds"
        + (f", server code {args.server_code}" if args.server_code else "")
        + ":"
    )
    print()
    print(markdown(JOB_HEADER, rows))
    print()
    print(
        f"{time.perf_counter() - started:.0f} s wall, "
        f"{time.process_time() - cpu_started:.0f} s CPU of this process"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

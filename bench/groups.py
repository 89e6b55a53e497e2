"""Job groups against one job per GPU type, on the traces (issue 13's table).

    .venv/bin/python -m bench.groups            # seeds 1-25, eta 0.2/0.5/0.8 (~4 min on 2 cores)
    .venv/bin/python -m bench.groups --quick    # seeds 1-5 (~1 min)

Every workload is replayed with the pure engine (beta 2, window 0, each GPU's
maximum power limit) once per scenario, sharing mode, policy, seed and eta:

- mixed: 40 recurrences, each on a40, p100, rtx6000 or v100 (seeded draw);
- warm start: 20 uncounted recurrences on one GPU, then 20 counted on
  another (the pair drawn per seed); cold = the second GPU's job alone;
- perturbed: mixed, with epochs to the target differing per GPU: x0.8-1.25
  per batch size (scale), or +-1 epoch per GPU (shift).

The number is the mean over counted recurrences of cost / the expected cost
of the best batch size on that recurrence's GPU, averaged over workloads,
etas and seeds. Per scenario and policy it prints separate vs group, the
change, the worst (workload, eta) mean against separate jobs and the worst
single run (same seed) against separate jobs. Targets (issue 13; printed,
not asserted): mixed at least 10% below separate under each policy with no
(workload, eta) mean more than 1% worse; warm start at least 12% below cold;
perturbed (scale) still below separate.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from app.bandit import Policy
from app.sim.groups import GroupPlan, Perturbation, Sharing, replay_group
from app.sim.pure_engine import PureEngine
from app.sim.results import ReplaySettings
from app.sim.traces import GPUS, WORKLOADS

MIXED_TARGET = 0.90
WARM_TARGET = 0.88
WORKLOAD_SLACK = 1.01


class Scenario(StrEnum):
    MIXED = "mixed GPUs"
    WARM = "warm start (20 on one GPU, then 20 on another)"
    SCALE = "mixed, epochs x0.8-1.25 per GPU and batch size"
    SHIFT = "mixed, epochs +-1 per GPU"


@dataclass(frozen=True, slots=True)
class Task:
    scenario: Scenario
    sharing: Sharing
    policy: Policy
    workload: int  # index into WORKLOADS
    eta: float
    seed: int


def warm_pair(seed: int) -> tuple[str, str]:
    """The warm start's first and second GPU for a seed."""
    first, second = np.random.default_rng([seed, 7]).choice(len(GPUS), size=2, replace=False)
    return GPUS[int(first)], GPUS[int(second)]


def plan(task: Task) -> GroupPlan:
    if task.scenario is Scenario.WARM:
        first, second = warm_pair(task.seed)
        return GroupPlan((second,), task.sharing, before=((first, 20),), recurrences=20)
    perturb = {Scenario.SCALE: Perturbation.SCALE, Scenario.SHIFT: Perturbation.SHIFT}
    return GroupPlan(GPUS, task.sharing, perturb=perturb.get(task.scenario, Perturbation.NONE))


def run(task: Task) -> tuple[Task, float | str]:
    """The replay's mean cost/oracle, or why it stopped early (a job that cannot proceed)."""
    settings = ReplaySettings(eta_knob=task.eta, seed=task.seed, policy=task.policy)
    workload = WORKLOADS[task.workload]
    result = asyncio.run(replay_group(PureEngine(), workload, settings, plan(task)))
    if result.error is not None or result.mean_over_oracle is None:
        return task, str(result.error)
    return task, result.mean_over_oracle


def run_all(tasks: Sequence[Task], jobs: int) -> dict[Task, float | str]:
    if jobs <= 1:
        return dict(run(t) for t in tasks)
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        return dict(pool.imap_unordered(run, tasks, chunksize=8))


def split(results: dict[Task, float | str]) -> tuple[dict[Task, float], list[Task]]:
    """The completed replays, keeping only seeds where both sharing modes completed."""
    failed = [t for t, v in results.items() if isinstance(v, str)]
    dropped = {(t.scenario, t.policy, t.workload, t.eta, t.seed) for t in failed}
    kept = {
        t: v
        for t, v in results.items()
        if isinstance(v, float) and (t.scenario, t.policy, t.workload, t.eta, t.seed) not in dropped
    }
    return kept, failed


def _row(
    results: dict[Task, float],
    scenario: Scenario,
    policy: Policy,
    etas: Sequence[float],
    seeds: Sequence[int],
) -> str:
    def value(sharing: Sharing, w: int, eta: float, seed: int) -> float:
        return results[Task(scenario, sharing, policy, w, eta, seed)]

    def done(w: int, eta: float) -> list[int]:
        return [s for s in seeds if Task(scenario, Sharing.GROUP, policy, w, eta, s) in results]

    def cell_ratio(w: int, eta: float) -> float:
        g = statistics.fmean(value(Sharing.GROUP, w, eta, s) for s in done(w, eta))
        return g / statistics.fmean(value(Sharing.SEPARATE, w, eta, s) for s in done(w, eta))

    def run_ratio(w: int, eta: float, seed: int) -> float:
        return value(Sharing.GROUP, w, eta, seed) / value(Sharing.SEPARATE, w, eta, seed)

    cells = [(w, eta) for w in range(len(WORKLOADS)) for eta in etas]
    runs = [(w, e, s) for w, e in cells for s in done(w, e)]
    sep = statistics.fmean(value(Sharing.SEPARATE, *r) for r in runs)
    grp = statistics.fmean(value(Sharing.GROUP, *r) for r in runs)
    w, e = max(cells, key=lambda c: cell_ratio(*c))
    rw, re_, rs = max(runs, key=lambda r: run_ratio(*r))
    met: bool | None = None
    if scenario is Scenario.MIXED:
        met = grp <= MIXED_TARGET * sep and cell_ratio(w, e) <= WORKLOAD_SLACK
    elif scenario is Scenario.WARM:
        met = grp <= WARM_TARGET * sep
    elif scenario is Scenario.SCALE:
        met = grp < sep
    return (
        f"| {scenario} | {policy} | {sep:.3f} | **{grp:.3f}** | {100 * (grp / sep - 1):+.1f}% "
        f"| {WORKLOADS[w].dataset} eta {e}: x{cell_ratio(w, e):.3f} "
        f"| {WORKLOADS[rw].dataset} eta {re_} seed {rs}: x{run_ratio(rw, re_, rs):.3f} "
        f"| {'-' if met is None else 'yes' if met else 'no'} |"
    )


def lines(results: dict[Task, float], etas: Sequence[float], seeds: Sequence[int]) -> list[str]:
    head = (
        "| scenario | policy | separate jobs | group | change | worst (workload, eta) "
        "vs separate | worst run vs separate | target met |"
    )
    out = [head, "|" + "---|" * 8]
    for scenario in Scenario:
        for policy in Policy:
            out.append(_row(results, scenario, policy, etas, seeds))
    return out


def per_workload_lines(
    results: dict[Task, float], etas: Sequence[float], seeds: Sequence[int], scenario: Scenario
) -> list[str]:
    head = "| workload | " + " | ".join(f"{p}: separate / group" for p in Policy) + " |"
    out = [head, "|" + "---|" * (1 + len(Policy))]
    for w, workload in enumerate(WORKLOADS):
        cells = [workload.dataset]
        for policy in Policy:
            means = [
                statistics.fmean(
                    results[t]
                    for e in etas
                    for s in seeds
                    if (t := Task(scenario, sharing, policy, w, e, s)) in results
                )
                for sharing in (Sharing.SEPARATE, Sharing.GROUP)
            ]
            cells.append(f"{means[0]:.3f} / {means[1]:.3f}")
        out.append("| " + " | ".join(cells) + " |")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1] if __doc__ else None)
    parser.add_argument("--seeds", type=int, default=25, help="how many seeds (default 25)")
    parser.add_argument("--quick", action="store_true", help="5 seeds")
    parser.add_argument("--etas", default="0.2,0.5,0.8")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    args = parser.parse_args(argv)
    seeds = range(1, (5 if args.quick else args.seeds) + 1)
    etas = [float(e) for e in args.etas.split(",")]
    tasks = [
        Task(scenario, sharing, policy, w, eta, seed)
        for scenario in Scenario
        for sharing in Sharing
        for policy in Policy
        for w in range(len(WORKLOADS))
        for eta in etas
        for seed in seeds
    ]
    started = time.perf_counter()
    results, failed = split(run_all(tasks, args.jobs))
    elapsed = time.perf_counter() - started
    out = [
        f"{len(tasks)} replays ({len(WORKLOADS)} workloads x {len(etas)} etas x {len(seeds)} "
        f"seeds x {len(Scenario)} scenarios x 2 sharing modes x 2 policies) in {elapsed:.0f} s "
        f"with {args.jobs} process(es)",
        "",
        "Mean over recurrences of cost / that GPU's oracle cost:",
        "",
        *lines(results, etas, seeds),
        "",
        "Per workload, mixed GPUs (mean over etas and seeds):",
        "",
        *per_workload_lines(results, etas, seeds, Scenario.MIXED),
        "",
        "Replays where a job could not proceed (no batch size converged in a pruning round; "
        "left out of the means with the other sharing mode's replay of the same seed):",
        "",
        *[
            f"- {t.scenario}, {t.sharing}, {t.policy}, {WORKLOADS[t.workload].dataset} "
            f"eta {t.eta} seed {t.seed}"
            for t in sorted(failed, key=str)
        ],
        *(["- none"] if not failed else []),
    ]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

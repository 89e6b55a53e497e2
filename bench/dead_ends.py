"""The perturbed mixed-GPU replays where a pruning round converges nowhere (issue 21).

    .venv/bin/python -m bench.dead_ends --json /tmp/after.json
    PYTHONPATH=<old checkout> python bench/dead_ends.py --json /tmp/before.json   # old code
    .venv/bin/python -m bench.dead_ends --compare /tmp/before.json

Replays bench/groups.py's two perturbed scenarios (mixed GPUs with epochs to
the target x0.8-1.25 per GPU and batch size, or +-1 epoch per GPU) for the
workloads where the paper's pruning dead-ends (cifar100, movielens-1m), both
sharing modes, both policies, eta 0.2/0.5/0.8 and seeds 1-25, with the pure
engine. Per replay it keeps the mean cost over that GPU's oracle, or the
error that stopped it, and how many of its jobs ended pruning on a round that
converged nowhere (SPEC section 5, rule 4; 0 on code without the rule).

``--compare`` reads another run's JSON (the code before the rule) and prints,
per scenario and policy: the replays that stopped there and here, how many
now went through a dead end, the mean cost/oracle of the replays that
completed there (here and there: equal when the rule changes no decision
outside a dead end) and of the formerly stopped ones here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import time
from collections.abc import Sequence
from typing import Any

from app.bandit import Policy
from app.sim.groups import Sharing, replay_group
from app.sim.pure_engine import PureEngine
from app.sim.results import ReplaySettings
from app.sim.traces import WORKLOADS
from bench.groups import Scenario, Task, plan

SCENARIOS = (Scenario.SCALE, Scenario.SHIFT)
DATASETS = ("cifar100", "movielens-1m")


def key(task: Task) -> str:
    dataset = WORKLOADS[task.workload].dataset
    values = (task.scenario.name, task.sharing, task.policy, dataset, task.eta, task.seed)
    return "|".join(str(v) for v in values)


def run(task: Task) -> tuple[str, dict[str, Any]]:
    settings = ReplaySettings(eta_knob=task.eta, seed=task.seed, policy=task.policy)
    engine = PureEngine()
    result = asyncio.run(replay_group(engine, WORKLOADS[task.workload], settings, plan(task)))
    dead_ends: dict[str, object] = getattr(engine, "dead_ends", dict)()  # none: no rule
    return key(task), {
        "mean_over_oracle": result.mean_over_oracle if result.error is None else None,
        "error": result.error,
        "dead_ends": len(dead_ends),
    }


def tasks(seeds: Sequence[int], etas: Sequence[float]) -> list[Task]:
    indices = [i for i, w in enumerate(WORKLOADS) if w.dataset in DATASETS]
    return [
        Task(scenario, sharing, policy, w, eta, seed)
        for scenario in SCENARIOS
        for sharing in Sharing
        for policy in Policy
        for w in indices
        for eta in etas
        for seed in seeds
    ]


def compare(here: dict[str, dict[str, Any]], there: dict[str, dict[str, Any]]) -> list[str]:
    head = (
        "| scenario | policy | replays | stopped before | stopped now | replays through a "
        "dead end now | cost/oracle of the others, before / now | formerly stopped, now "
        "| all, now |"
    )
    out = [head, "|" + "---|" * 9]
    for scenario in SCENARIOS:
        for policy in Policy:
            keys = [k for k in here if k.startswith(f"{scenario.name}|") and f"|{policy}|" in k]
            stopped_before = [k for k in keys if there[k]["error"] is not None]
            others = [k for k in keys if there[k]["error"] is None]
            before = statistics.fmean(there[k]["mean_over_oracle"] for k in others)
            now = statistics.fmean(here[k]["mean_over_oracle"] for k in others)
            formerly = [here[k]["mean_over_oracle"] for k in stopped_before]
            cells = [
                str(scenario), str(policy), str(len(keys)), str(len(stopped_before)),
                str(sum(1 for k in keys if here[k]["error"] is not None)),
                str(sum(1 for k in keys if here[k]["dead_ends"])),
                f"{before:.4f} / {now:.4f}",
                f"{statistics.fmean(formerly):.3f} ({len(formerly)})" if formerly else "-",
                f"{statistics.fmean(here[k]['mean_over_oracle'] for k in keys):.4f}",
            ]  # fmt: skip
            out.append("| " + " | ".join(cells) + " |")
    changed = [k for k in here if there[k]["error"] is None and here[k] != there[k]]
    zeus = sum(1 for k in changed if f"|{Policy.ZEUS}|" in k)
    out += ["", f"Replays that completed before and differ now: {len(changed)} ({zeus} zeus)"]
    out += ["", "Replays that stopped before (now: cost/oracle, jobs through a dead end):"]
    out += [
        f"- {k}: {there[k]['error']} -> {here[k]['mean_over_oracle']:.3f}, {here[k]['dead_ends']}"
        for k in sorted(k for k in here if there[k]["error"] is not None)
    ]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1] if __doc__ else None)
    parser.add_argument("--seeds", type=int, default=25)
    parser.add_argument("--etas", default="0.2,0.5,0.8")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", help="write every replay's result here")
    parser.add_argument("--compare", help="a JSON written by the code before the rule")
    args = parser.parse_args(argv)
    todo = tasks(range(1, args.seeds + 1), [float(e) for e in args.etas.split(",")])
    started = time.perf_counter()
    if args.jobs <= 1:
        results = dict(run(t) for t in todo)
    else:
        with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
            results = dict(pool.imap_unordered(run, todo, chunksize=8))
    print(f"{len(todo)} replays in {time.perf_counter() - started:.0f} s")
    stopped = sorted(k for k, v in results.items() if v["error"] is not None)
    through = sorted(k for k, v in results.items() if v["dead_ends"])
    print(f"stopped by an error: {len(stopped)}; through a dead end: {len(through)}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1, sort_keys=True)
    if args.compare:
        with open(args.compare) as handle:
            print("\n".join(["", *compare(results, json.load(handle))]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

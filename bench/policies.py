"""The zeus and predictive policies side by side on the 24 trace cases.

    .venv/bin/python -m bench.policies          # seeds 1-25, eta 0.2/0.5/0.8, both curves
    .venv/bin/python -m bench.policies --seeds 5 --etas 0.5 --curves linear
    .venv/bin/python -m bench.policies --power-limit 150 --first-seed 26 --seeds 10  # held out
    .venv/bin/python -m bench.policies --plot docs/img/policies.png

Every case is replayed with the pure engine (beta 2, window 0, the GPU's
maximum power limit, the case's default recurrences) once per policy, seed,
eta and metric curve; the same seed gives both policies the same bandit seed
and the same path draws (they diverge once the policies ask for different
trials). Per case and overall it prints the mean cost/oracle and savings vs
default over seeds, the worst case, the cases whose mean is worse under
predictive than under zeus, and the single runs more than 2% worse than zeus's
run with the same seed, as markdown tables (those of docs/benchmarks.md).
Targets (issue 9; printed, not asserted): predictive
mean cost/oracle <= 1.045 on both curves at every eta, no case worse, no run
more than 2% worse.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from app.bandit import Policy
from app.sim.pure_engine import PureEngine
from app.sim.replay import replay
from app.sim.results import CaseResult, MetricCurve, ReplaySettings
from app.sim.traces import Case, all_cases

TARGET = 1.045
RUN_SLACK = 1.02
PLOT_CASES = ("movielens-1m@p100", "cifar100@p100", "imagenet@rtx6000", "sentiment140@a40")


@dataclass(frozen=True, slots=True)
class Config:
    """One column of the comparison: a metric curve and an eta."""

    curve: MetricCurve
    eta: float

    def __str__(self) -> str:
        return f"{self.curve}, eta {self.eta}"


@dataclass(frozen=True, slots=True)
class Run:
    """One replay's summary numbers."""

    case: int  # index into the case list
    seed: int
    config: Config
    policy: Policy
    cost_over_oracle: float
    savings_pct: float


def short_name(case: Case) -> str:
    return f"{case.workload.dataset}@{case.gpu}"


def settings(config: Config, policy: Policy, seed: int) -> ReplaySettings:
    return ReplaySettings(eta_knob=config.eta, seed=seed, policy=policy, metric_curve=config.curve)


def replay_case(case: Case, config: Config, policy: Policy, seed: int) -> CaseResult:
    result = asyncio.run(replay(PureEngine(), case, settings(config, policy, seed)))
    if result.error is not None or result.cost_over_oracle is None:
        raise RuntimeError(f"{short_name(case)} {config} {policy} seed {seed}: {result.error}")
    return result


@cache
def cases_at(power_limit: int | None) -> tuple[Case, ...]:
    """The 24 cases at ``power_limit`` (None: each GPU's maximum), built once per process."""
    return tuple(all_cases(power_limit=power_limit))


def _run(task: tuple[int | None, int, int, Config, Policy]) -> Run:
    power_limit, index, seed, config, policy = task
    result = replay_case(cases_at(power_limit)[index], config, policy, seed)
    assert result.cost_over_oracle is not None and result.savings_vs_default_pct is not None
    return Run(index, seed, config, policy, result.cost_over_oracle, result.savings_vs_default_pct)


def run_all(
    configs: Sequence[Config],
    seeds: Sequence[int],
    cases: Sequence[int],
    jobs: int,
    power_limit: int | None = None,
) -> list[Run]:
    tasks = [
        (power_limit, c, s, config, policy)
        for config in configs
        for c in cases
        for s in seeds
        for policy in Policy
    ]
    if jobs <= 1:
        return [_run(t) for t in tasks]
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        return list(pool.imap_unordered(_run, tasks, chunksize=16))


class Table:
    """The runs indexed by (config, policy, case, seed)."""

    def __init__(self, runs: Iterable[Run]) -> None:
        self.by_key = {(r.config, r.policy, r.case, r.seed): r for r in runs}
        curves = list(MetricCurve)
        self.configs = sorted(
            {k[0] for k in self.by_key}, key=lambda c: (curves.index(c.curve), c.eta)
        )
        self.cases = sorted({k[2] for k in self.by_key})
        self.seeds = sorted({k[3] for k in self.by_key})

    def runs(self, config: Config, policy: Policy, case: int) -> list[Run]:
        return [self.by_key[config, policy, case, s] for s in self.seeds]

    def case_mean(self, config: Config, policy: Policy, case: int) -> float:
        return statistics.fmean(r.cost_over_oracle for r in self.runs(config, policy, case))

    def case_savings(self, config: Config, policy: Policy, case: int) -> float:
        return statistics.fmean(r.savings_pct for r in self.runs(config, policy, case))

    def overall(self, config: Config, policy: Policy) -> float:
        return statistics.fmean(self.case_mean(config, policy, c) for c in self.cases)

    def overall_savings(self, config: Config, policy: Policy) -> float:
        return statistics.fmean(self.case_savings(config, policy, c) for c in self.cases)

    def worst_case(self, config: Config, policy: Policy) -> tuple[int, float]:
        means = {c: self.case_mean(config, policy, c) for c in self.cases}
        worst = max(means, key=means.__getitem__)
        return worst, means[worst]

    def worse_cases(self, config: Config) -> list[int]:
        """Cases whose mean over seeds is worse under predictive than under zeus."""
        return [
            c
            for c in self.cases
            if self.case_mean(config, Policy.PREDICTIVE, c) > self.case_mean(config, Policy.ZEUS, c)
        ]

    def worse_runs(self, config: Config) -> list[tuple[int, int, float]]:
        """(case, seed, predictive / zeus) of the runs more than 2% worse than zeus's."""
        found = []
        for c in self.cases:
            for s in self.seeds:
                z = self.by_key[config, Policy.ZEUS, c, s].cost_over_oracle
                p = self.by_key[config, Policy.PREDICTIVE, c, s].cost_over_oracle
                if p > RUN_SLACK * z:
                    found.append((c, s, p / z))
        return found

    def max_run_ratio(self, config: Config) -> float:
        return max(
            self.by_key[config, Policy.PREDICTIVE, c, s].cost_over_oracle
            / self.by_key[config, Policy.ZEUS, c, s].cost_over_oracle
            for c in self.cases
            for s in self.seeds
        )


def _names(cases: Sequence[Case], indices: Iterable[int]) -> str:
    return ", ".join(short_name(cases[i]) for i in indices) or "none"


def overall_lines(table: Table, cases: Sequence[Case]) -> list[str]:
    head = "| curve | eta | zeus cost/oracle | predictive cost/oracle | zeus savings vs default | "
    head += "predictive savings vs default | worst case zeus | worst case predictive | "
    head += "cases worse than zeus | runs >2% worse (max ratio) | target met |"
    lines = [head, "|" + "---|" * 11]
    for config in table.configs:
        z, p = table.overall(config, Policy.ZEUS), table.overall(config, Policy.PREDICTIVE)
        wz, wzv = table.worst_case(config, Policy.ZEUS)
        wp, wpv = table.worst_case(config, Policy.PREDICTIVE)
        worse, bad = table.worse_cases(config), table.worse_runs(config)
        met = p <= TARGET and not worse and not bad
        lines.append(
            f"| {config.curve} | {config.eta} | {z:.4f} | **{p:.4f}** "
            f"| {table.overall_savings(config, Policy.ZEUS):+.1f}% "
            f"| {table.overall_savings(config, Policy.PREDICTIVE):+.1f}% "
            f"| {short_name(cases[wz])} {wzv:.3f} | {short_name(cases[wp])} {wpv:.3f} "
            f"| {_names(cases, worse)} | {len(bad)} ({table.max_run_ratio(config):.3f}) "
            f"| {'yes' if met else 'no'} |"
        )
    return lines


def per_case_lines(table: Table, cases: Sequence[Case], curve: MetricCurve) -> list[str]:
    configs = [c for c in table.configs if c.curve is curve]
    head = "| case | " + " | ".join(f"eta {c.eta}: zeus | predictive" for c in configs)
    head += (
        " | savings vs default (eta 0.5): zeus / predictive |"
        if any(c.eta == 0.5 for c in configs)
        else " |"
    )
    columns = 1 + 2 * len(configs) + (1 if any(c.eta == 0.5 for c in configs) else 0)
    lines = [head, "|" + "---|" * columns]
    for i in table.cases:
        cells = [short_name(cases[i])]
        for config in configs:
            z = table.case_mean(config, Policy.ZEUS, i)
            p = table.case_mean(config, Policy.PREDICTIVE, i)
            cells += [f"{z:.3f}", f"{p:.3f}" + (" (worse)" if p > z else "")]
        mid = next((c for c in configs if c.eta == 0.5), None)
        if mid is not None:
            zs = table.case_savings(mid, Policy.ZEUS, i)
            ps = table.case_savings(mid, Policy.PREDICTIVE, i)
            cells.append(f"{zs:+.1f}% / {ps:+.1f}%")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def worse_run_lines(table: Table, cases: Sequence[Case]) -> list[str]:
    lines = []
    for config in table.configs:
        for c, s, ratio in table.worse_runs(config):
            lines.append(f"- {config}: {short_name(cases[c])} seed {s}: x{ratio:.3f} of zeus")
    return lines or ["- none"]


def curves_identical(table: Table) -> bool:
    """Whether every run is the same on both curves (no rule reads the metric's shape)."""
    linear = {(k[0].eta, *k[1:]): r.cost_over_oracle for k, r in table.by_key.items()
              if k[0].curve is MetricCurve.LINEAR}  # fmt: skip
    concave = {(k[0].eta, *k[1:]): r.cost_over_oracle for k, r in table.by_key.items()
               if k[0].curve is MetricCurve.CONCAVE}  # fmt: skip
    return bool(linear) and linear == concave


def plot(path: Path, seed: int, eta: float, first: int = 30) -> None:
    """Per case: cost per recurrence (the first ``first``) and cumulative cost, over the oracle's.

    Costs are in units of the oracle batch size's expected cost per recurrence,
    so that the cases share a scale; every try of a recurrence counts.
    """
    from matplotlib.figure import Figure

    by_name = {short_name(c): c for c in all_cases()}
    fig = Figure(figsize=(15, 7))
    axes = fig.subplots(2, len(PLOT_CASES))
    config = Config(MetricCurve.LINEAR, eta)
    styles = {Policy.ZEUS: "tab:gray", Policy.PREDICTIVE: "tab:blue"}
    for column, name in enumerate(PLOT_CASES):
        case = by_name[name]
        results = {p: replay_case(case, config, p, seed) for p in Policy}
        oracle = results[Policy.ZEUS].oracle
        unit = oracle.expected_cost
        top, bottom = axes[0][column], axes[1][column]
        shown = range(1, min(first, results[Policy.ZEUS].played) + 1)
        top.plot(shown, [c / unit for c in oracle.per_recurrence[: len(shown)]],
                 color="tab:green", alpha=0.6, label=f"oracle ({oracle.batch_size})")  # fmt: skip
        for policy, color in styles.items():
            r = results[policy]
            top.step(shown, [c / unit for c in r.per_recurrence[: len(shown)]], where="mid",
                     color=color, label=str(policy))  # fmt: skip
            running, paid, oracle_paid = [], 0.0, 0.0
            for cost, oracle_cost in zip(r.per_recurrence, oracle.per_recurrence, strict=False):
                paid, oracle_paid = paid + cost, oracle_paid + oracle_cost
                running.append(paid / oracle_paid)
            bottom.plot(range(1, len(running) + 1), running, color=color,
                        label=f"{policy}: x{r.cost_over_oracle:.3f} at the end")  # fmt: skip
        top.set_title(f"{name} at {case.power_limit} W", fontsize="medium")
        top.set_xlabel("recurrence")
        bottom.set_xlabel("recurrence")
        bottom.axhline(1.0, color="tab:green", alpha=0.6, linewidth=1)
        bottom.set_ylim(0.9, 3.0)
        top.legend(fontsize="small", loc="upper right")
        bottom.legend(fontsize="small", loc="upper right")
    axes[0][0].set_ylabel("cost per recurrence\n(x oracle's expected)")
    axes[1][0].set_ylabel("cumulative cost\n(x oracle's cumulative)")
    fig.suptitle(f"zeus vs predictive, seed {seed}, eta {eta}, beta 2 (all tries counted)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1] if __doc__ else None)
    parser.add_argument("--seeds", type=int, default=25, help="how many seeds (default 25)")
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--power-limit", type=int, help="watts (default: each GPU's maximum)")
    parser.add_argument("--etas", default="0.2,0.5,0.8")
    parser.add_argument("--curves", default="linear,concave")
    parser.add_argument("--cases", default="", help="comma-separated, e.g. squad@p100")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--plot", type=Path, help="draw cost per recurrence to this PNG")
    args = parser.parse_args(argv)
    cases = cases_at(args.power_limit)
    wanted = {n.strip() for n in args.cases.split(",") if n.strip()}
    indices = [i for i, c in enumerate(cases) if not wanted or short_name(c) in wanted]
    configs = [
        Config(MetricCurve(curve.strip()), float(eta))
        for curve in args.curves.split(",")
        for eta in args.etas.split(",")
    ]
    started = time.perf_counter()
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    table = Table(run_all(configs, seeds, indices, args.jobs, args.power_limit))
    elapsed = time.perf_counter() - started
    out = [
        f"{len(table.by_key)} replays ({len(indices)} cases x {args.seeds} seeds from "
        f"{args.first_seed} x {len(configs)} configs x 2 policies; power limit "
        f"{args.power_limit or 'max'}) in {elapsed:.0f} s with {args.jobs} process(es)",
        "",
        *overall_lines(table, cases),
        "",
    ]
    if curves_identical(table):
        out += ["Every run is identical on both metric curves.", ""]
    for curve in [c for c in MetricCurve if any(k.curve is c for k in configs)]:
        out += [f"Per case, mean cost/oracle over seeds ({curve} curve):", ""]
        out += [*per_case_lines(table, cases, curve), ""]
    out += ["Runs more than 2% worse than zeus's run with the same seed:", ""]
    out += worse_run_lines(table, cases)
    print("\n".join(out))
    if args.plot is not None:
        plot(args.plot, seed=1, eta=0.5)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

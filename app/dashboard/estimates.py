"""What the dashboard derives from the read API's schemas: savings, bands, outcomes.

Pure functions over ``TrialRead`` / ``ArmRead`` / ``JobRead`` values, so that
they are tested without a database and stay correct whatever the storage
layer underneath looks like.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from app.schemas import ArmRead, JobRead, TrialRead

Z_95 = 1.959963984540054  # two-sided 95% quantile of the standard normal

Outcome = Literal["converged", "early-stopped", "failed", "running"]


def outcome(trial: TrialRead) -> Outcome:
    """How a trial ended, for marking it.

    A Succeeded trial that did not converge was stopped early: its cost
    exceeded beta * min_cost, or it ran out of epochs.
    """
    if trial.status == "Dispatched":
        return "running"
    if trial.status == "Failed":
        return "failed"
    return "converged" if trial.converged else "early-stopped"


@dataclass(frozen=True)
class Savings:
    """The estimated saving of the optimizer against always using the default batch size.

    ``spent`` is what every finished (Succeeded) trial cost, explorations and
    early-stopped ones included; ``baseline`` is what the same number of
    converged runs would have cost at the default batch size's mean converged
    cost. Failed trials report no cost and are left out of both.
    """

    default_batch_size: int
    converged_runs: int
    spent: float
    default_cost: float | None
    baseline: float | None
    saved: float | None
    fraction: float | None


def estimate_savings(trials: Sequence[TrialRead], default_batch_size: int) -> Savings:
    """Savings of the job's own trials against "always the default batch size".

    Each converged run is one recurrence that got its model. Had it used the
    default batch size, it would have cost (we estimate) the mean cost of the
    default's converged trials, with no exploration and no early-stopped
    attempts. The estimate is unknown (None) until the default has converged
    once; it is negative while exploration costs more than it has saved.
    """
    finished = [t for t in trials if t.status == "Succeeded" and t.cost is not None]
    spent = math.fsum(t.cost for t in finished if t.cost is not None)
    converged = [t for t in finished if t.converged]
    defaults = [t.cost for t in converged if t.batch_size == default_batch_size]
    runs = len(converged)
    if not defaults:
        return Savings(default_batch_size, runs, spent, None, None, None, None)
    default_cost = math.fsum(c for c in defaults if c is not None) / len(defaults)
    baseline = default_cost * runs
    saved = baseline - spent
    fraction = saved / baseline if baseline > 0 else None
    return Savings(default_batch_size, runs, spent, default_cost, baseline, saved, fraction)


@dataclass(frozen=True)
class CostBand:
    """An arm's posterior of the cost: its mean and a central credible interval.

    ``low``/``high`` are None when the posterior says nothing yet (precision 0:
    an infinitely wide band); they equal the mean when the precision is
    infinite (every observed cost was the same).
    """

    batch_size: int
    mean: float
    low: float | None
    high: float | None
    num_observations: int


def cost_band(arm: ArmRead, z: float = Z_95) -> CostBand:
    """The cost's posterior band of an arm: -param_mean +- z / sqrt(param_precision).

    The reward's posterior is Normal(param_mean, 1 / sqrt(param_precision)) and
    cost = -reward. A null precision on the wire means infinite (zero width).
    """
    mean = -arm.param_mean
    precision = arm.param_precision
    if precision is not None and precision <= 0:
        return CostBand(arm.batch_size, mean, None, None, arm.num_observations)
    half = 0.0 if precision is None else z / math.sqrt(precision)
    return CostBand(arm.batch_size, mean, mean - half, mean + half, arm.num_observations)


def best_arm(bands: Sequence[CostBand]) -> CostBand | None:
    """The arm with the lowest posterior mean cost: what the bandit favours now."""
    return min(bands, key=lambda b: (b.mean, b.batch_size), default=None)


RoundResult = Literal["converged", "early-stopped", "running", "not explored"]


@dataclass(frozen=True)
class PruningRow:
    """One batch size in the pruning stage: each round's exploration, and its fate."""

    batch_size: int
    rounds: tuple[RoundResult, ...]
    failed: int
    fate: Literal["arm", "pruned", "candidate"]


def pruning_rows(
    job: JobRead, explorations: Sequence[TrialRead], arm_sizes: Sequence[int]
) -> list[PruningRow]:
    """Per batch size, its r-th non-Failed Exploration trial per round (SPEC section 5).

    A round that converged nowhere is walked again (rule 4), so a batch size
    may have more explorations than rounds: then every row has a column per
    walk, as many as the most explored batch size has. In the bandit stage a
    batch size survived pruning when it is an arm; while pruning, when it is
    still a candidate of the current round.
    """
    by_size: dict[int, list[TrialRead]] = {b: [] for b in job.batch_sizes}
    failed = dict.fromkeys(job.batch_sizes, 0)
    for trial in sorted(explorations, key=lambda t: t.trial_number):
        if trial.type != "Exploration" or trial.batch_size not in by_size:
            continue
        if trial.status == "Failed":
            failed[trial.batch_size] += 1
        else:
            by_size[trial.batch_size].append(trial)
    if job.stage == "MAB":
        kept = set(arm_sizes)
    else:
        kept = set(job.exploration.candidates) if job.exploration else set()
    rows = []
    walks = max([job.num_pruning_rounds, *(len(t) for t in by_size.values())])
    for size, trials in by_size.items():
        rounds: list[RoundResult] = []
        for r in range(walks):
            rounds.append(_round_result(trials[r]) if r < len(trials) else "not explored")
        fate: Literal["arm", "pruned", "candidate"] = "pruned"
        if size in kept:
            fate = "arm" if job.stage == "MAB" else "candidate"
        rows.append(PruningRow(size, tuple(rounds), failed[size], fate))
    return rows


def _round_result(trial: TrialRead) -> RoundResult:
    if trial.status == "Dispatched":
        return "running"
    return "converged" if trial.converged else "early-stopped"

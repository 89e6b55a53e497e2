"""The predictive policy: the paper's algorithm, judging doomed runs sooner.

Most of Zeus's regret on its own traces is paid in the pruning stage, by runs
that go on until their cost crosses ``beta * min_cost`` although it was clear
earlier that they would, and by second-round explorations of batch sizes that
round 1 already showed to be expensive. Two rules address that (docs/SPEC.md,
"The predictive policy"):

- *predictive stop*: a run stops, not converged, as soon as its cost so far
  plus the cost of its last epoch times a lower bound on the epochs it still
  needs exceeds ``beta * min_cost``;
- *survivor filter*: a pruning round's survivors whose cost exceeds
  ``SURVIVOR_RATIO`` times that round's cheapest are not explored again.

State in, decision out, as in the rest of the package. Per running trial the
caller keeps its previous report (:class:`LastReport`, two numbers); per batch
size, the fewest epochs any of its converged trials needed (one integer).
Both are bounded, and both are what one report reads and writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from app.bandit.stopping import cost_upper_bound, judge_report
from app.bandit.types import JobParams, Verdict

SURVIVOR_RATIO = 1.5


@dataclass(frozen=True, slots=True)
class LastReport:
    """A running trial's previous report: its epoch and its cumulative cost.

    Before the first report it is epoch 0 at cost 0, so the first report's
    per-epoch cost is its cumulative cost over its epoch count.
    """

    epoch: int = 0
    cost: float = 0.0


@dataclass(frozen=True, slots=True)
class PredictiveVerdict:
    """The answer to one report under the predictive policy, and the state it leaves.

    ``verdict.cost`` is the cost paid so far. ``recorded_cost`` is what the
    trial counts as in the arm statistics: the predicted cost when the
    prediction stopped it (so that being stopped early does not make a batch
    size look cheap), else the cost paid. ``fewest_epochs`` is this batch
    size's new fewest converged epoch count (None: still none converged).
    """

    verdict: Verdict
    recorded_cost: float
    last_report: LastReport
    fewest_epochs: int | None


def epochs_needed(batch_size: int, fewest_epochs: Mapping[int, int]) -> int:
    """A lower bound on the epochs ``batch_size`` needs to reach the target (0: unknown).

    A batch size b that reaches the target in E epochs of N samples takes
    about E * N / b optimiser steps, and a smaller batch size never needs
    fewer steps than a larger one to reach the same target (at best, doubling
    the batch size halves the steps; past the critical batch size it halves
    them less). So if batch size B >= b converged in E_B epochs, b needs at
    least E_B * b / B epochs: floor(E_B * b / B), which also absorbs the
    rounding of "reached within epoch E_B". Nothing bounds b from a smaller
    batch size (one that needs more epochs than a larger one is common: fewer,
    noisier steps per epoch). B = b is the batch size's own history.
    """
    return max(
        (epochs * batch_size // bs for bs, epochs in fewest_epochs.items() if bs >= batch_size),
        default=0,
    )


def predicted_cost(cost: float, current_epoch: int, last: LastReport, needed: int) -> float:
    """The cost so far plus the last epoch's cost times the epochs still needed.

    The epochs still needed are at least 1 (the target is not reached yet)
    and at least ``needed - current_epoch``. The last epoch's cost is the cost
    since the previous report per epoch since it; 0 when the epoch did not
    advance (a repeated report), which leaves the paper's rule alone.
    """
    elapsed = current_epoch - last.epoch
    per_epoch = max(0.0, cost - last.cost) / elapsed if elapsed > 0 else 0.0
    return cost + per_epoch * max(1, needed - current_epoch)


def judge_report_predictive(
    params: JobParams,
    *,
    min_cost: float | None,
    batch_size: int,
    time: float,
    energy: float,
    metric: float,
    current_epoch: int,
    last: LastReport,
    fewest_epochs: Mapping[int, int],
) -> PredictiveVerdict:
    """The paper's answer (:func:`judge_report`), then the predictive stop if it said go on.

    ``last`` is this trial's previous report and ``fewest_epochs`` maps a
    batch size to the fewest epochs any of its converged trials needed; the
    caller persists the returned ``last_report`` and ``fewest_epochs``.
    """
    verdict = judge_report(
        params, min_cost=min_cost, batch_size=batch_size, time=time, energy=energy,
        metric=metric, current_epoch=current_epoch,
    )  # fmt: skip
    fewest = fewest_epochs.get(batch_size)
    here = LastReport(current_epoch, verdict.cost)
    if verdict.stop_train:
        if verdict.converged:
            fewest = current_epoch if fewest is None else min(fewest, current_epoch)
        return PredictiveVerdict(verdict, verdict.cost, here, fewest)
    bound = cost_upper_bound(params, min_cost)
    needed = epochs_needed(batch_size, fewest_epochs)
    predicted = predicted_cost(verdict.cost, current_epoch, last, needed)
    if predicted <= bound:
        return PredictiveVerdict(verdict, verdict.cost, here, fewest)
    stop = Verdict(
        True,
        False,
        verdict.cost,
        f"Batch size {batch_size} is predicted to exceed the cost upper bound: cost "
        f"{verdict.cost:.6g} plus its last epoch's cost times at least "
        f"{max(1, needed - current_epoch)} more epoch(s) is {predicted:.6g} > beta_knob "
        f"{params.beta_knob} * min_cost {min_cost:.6g}.",
    )
    return PredictiveVerdict(stop, predicted, here, fewest)


def survivors(costs: Mapping[int, float], ratio: float = SURVIVOR_RATIO) -> tuple[int, ...]:
    """The batch sizes whose cost is within ``ratio`` times the cheapest one's, ascending."""
    if not costs:
        return ()
    cheapest = min(costs.values())
    return tuple(sorted(bs for bs, cost in costs.items() if cost <= ratio * cheapest))


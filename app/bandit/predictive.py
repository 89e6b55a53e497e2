"""The predictive policy: the paper's algorithm, judging doomed runs sooner.

Most of Zeus's regret on its own traces is paid in the pruning stage: by runs
that go on until their cost crosses ``beta * min_cost`` although it was clear
earlier that they would, and by explorations of batch sizes that an earlier
round already showed to be expensive. The rules (docs/SPEC.md, section 9):

- *epochs still needed*: the job's converged trials bound from below how many
  more epochs a run needs (:func:`epochs_needed`);
- *predictive stop*: a run stops, not converged, once its cost so far plus its
  last epoch's cost times at least one more epoch exceeds ``beta * min_cost``;
- *round stop*: an exploration of a pruning round before the last stops, not
  converged, once its cost so far plus its last epoch's cost times the epochs
  it still needs exceeds ``SURVIVOR_RATIO * min_cost``: it cannot survive;
- *survivor filter*: after each pruning round, the survivors that cost more
  than ``SURVIVOR_RATIO`` times the round's cheapest are dropped
  (:func:`survivors`, applied by the pruning walk).

State in, decision out, as in the rest of the package. Per running trial the
caller keeps its previous report (:class:`LastReport`, two numbers) and, for an
exploration, its pruning round; per batch size, the fewest epochs any of its
converged trials needed (one integer). A report reads and writes only those.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from app.bandit.stopping import cost_upper_bound, judge_report
from app.bandit.types import JobParams, StopReason, Verdict

SURVIVOR_RATIO = 1.5


@dataclass(frozen=True, slots=True)
class LastReport:
    """A running trial's previous report: its epoch and its cumulative cost."""

    epoch: int
    cost: float


@dataclass(frozen=True, slots=True)
class PredictiveVerdict:
    """The answer to one report under the predictive policy, and the state it leaves.

    ``verdict.cost`` is the cost paid so far. ``recorded_cost`` is what the
    trial counts as in the arm statistics: its predicted cost when a
    prediction stopped it (so that being stopped early does not make a batch
    size look cheap), else the cost paid. ``fewest_epochs`` is this batch
    size's fewest epochs of a converged trial, this one included (None: none
    converged yet).
    """

    verdict: Verdict
    recorded_cost: float
    last_report: LastReport
    fewest_epochs: int | None


def epochs_needed(batch_size: int, fewest_epochs: Mapping[int, int]) -> int:
    """A lower bound on the epochs ``batch_size`` needs to reach the target (0: unknown).

    Training for E epochs on N samples with batch size b takes E * N / b
    optimiser steps, and a smaller batch size never needs fewer steps than a
    larger one to reach the same target (a larger batch gives a less noisy
    gradient per step). So if a batch size B >= b converged in E_B epochs, b
    needs at least E_B * b / B epochs, rounded down (which also absorbs "reached
    within epoch E_B"). B = b is the batch size's own history. A smaller batch
    size bounds nothing: it may need more epochs than b (fewer, noisier steps
    per epoch) or fewer (more steps per epoch); both happen in the traces.
    """
    return max(
        (epochs * batch_size // bs for bs, epochs in fewest_epochs.items() if bs >= batch_size),
        default=0,
    )


def last_epoch_cost(cost: float, current_epoch: int, last: LastReport | None) -> float:
    """The cost per epoch since the previous report.

    0 on a trial's first report, whose cost also carries the start-up work
    (loading data, compiling, warming up) that later epochs do not repeat, and
    on a report whose epoch did not advance: the paper's rule alone then.
    """
    if last is None or current_epoch <= last.epoch:
        return 0.0
    return max(0.0, cost - last.cost) / (current_epoch - last.epoch)


def judge_report_predictive(
    params: JobParams,
    *,
    min_cost: float | None,
    batch_size: int,
    time: float,
    energy: float,
    metric: float,
    current_epoch: int,
    last: LastReport | None,
    fewest_epochs: Mapping[int, int],
    pruning_round: int | None,
) -> PredictiveVerdict:
    """The paper's answer (:func:`judge_report`), then the predictive rules if it said go on.

    ``last`` is this trial's previous report (None before its first),
    ``fewest_epochs`` maps a batch size to the fewest epochs any of its
    converged trials needed, and ``pruning_round`` is the 0-based round of an
    exploration trial (None for other trials). The caller persists the
    returned ``last_report`` and this batch size's ``fewest_epochs``.
    """
    verdict = judge_report(
        params, min_cost=min_cost, batch_size=batch_size, time=time, energy=energy,
        metric=metric, current_epoch=current_epoch,
    )  # fmt: skip
    cost, fewest = verdict.cost, fewest_epochs.get(batch_size)
    here = LastReport(current_epoch, cost)
    if verdict.stop_train:
        if verdict.converged:
            fewest = current_epoch if fewest is None else min(fewest, current_epoch)
        return PredictiveVerdict(verdict, cost, here, fewest)
    if params.beta_knob is None or min_cost is None:
        return PredictiveVerdict(verdict, cost, here, fewest)
    per_epoch = last_epoch_cost(cost, current_epoch, last)
    left = max(0, epochs_needed(batch_size, fewest_epochs) - current_epoch)
    predicted = cost + per_epoch * max(1, left)
    if predicted > cost_upper_bound(params, min_cost):
        message = (
            f"Batch size {batch_size} is predicted to exceed the cost upper bound: cost "
            f"{cost:.6g} + {max(1, left)} more epoch(s) of {per_epoch:.6g} = {predicted:.6g} "
            f"> beta_knob {params.beta_knob} * min_cost {min_cost:.6g}."
        )
        return PredictiveVerdict(
            Verdict(True, False, cost, message, StopReason.STOPPED_EARLY), predicted, here, fewest
        )
    if (
        pruning_round is not None
        and pruning_round + 1 < params.num_pruning_rounds
        and cost + per_epoch * left > SURVIVOR_RATIO * min_cost
    ):
        message = (
            f"Batch size {batch_size} cannot survive pruning round {pruning_round + 1}: cost "
            f"{cost:.6g} + {left} more epoch(s) of {per_epoch:.6g} > {SURVIVOR_RATIO} * "
            f"min_cost {min_cost:.6g}."
        )
        return PredictiveVerdict(
            Verdict(True, False, cost, message, StopReason.STOPPED_EARLY), predicted, here, fewest
        )
    return PredictiveVerdict(verdict, cost, here, fewest)


def survivors(costs: Mapping[int, float], ratio: float = SURVIVOR_RATIO) -> tuple[int, ...]:
    """The batch sizes whose cost is within ``ratio`` times the cheapest one's, ascending."""
    if not costs:
        return ()
    cheapest = min(costs.values())
    return tuple(sorted(bs for bs, cost in costs.items() if cost <= ratio * cheapest))

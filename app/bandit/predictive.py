"""The predictive policy: the paper's algorithm, judging doomed runs sooner.

Most of Zeus's regret on its own traces is paid in the pruning stage: by runs
that go on until their cost crosses ``beta * min_cost`` although it was clear
earlier that they would, and by explorations of batch sizes that an earlier
round already showed to be expensive. The rules (docs/SPEC.md, section 10):

- *epochs still needed*: a batch size that has converged needs at least its
  own fewest epochs; one that has not is bounded from below by the larger
  batch sizes' converged trials (:func:`planned_epochs`). A batch size's own
  history wins over predictions made from other batch sizes, which assume
  that a smaller batch never needs fewer optimiser steps: a real job can
  contradict that, and a stop that its own runs contradict would stop the
  best batch size (issue 21);
- *reference cost*: the bounds scale the cost of a typical run of the
  cheapest batch size, not of its single luckiest run: the mean recorded cost
  of ``min_cost_batch_size``'s trials, within ``[min_cost, SURVIVOR_RATIO *
  min_cost]`` (:func:`bound_reference`);
- *predictive stop*: a run stops, not converged, once its cost so far plus its
  last epoch's cost times the epochs it still needs *but one* exceeds ``beta *
  reference`` (the paper's rule itself also reads ``beta * reference``): it
  would cross the bound before the earliest epoch it can reach the target.
  Never with one epoch or none still needed: the paper's rule lets a run
  train the epoch that crosses the bound, and one that reaches the target
  there leaves its user a model (over the bound, so not converged for the
  service) where a run stopped an epoch sooner leaves none and its recurrence
  pays a retry (issue 21: that stop made the policy cost more than zeus on a
  real job). So, with exact epoch costs, the prediction never stops a run
  that the paper's rule would let reach the target;
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


def planned_epochs(batch_size: int, fewest_epochs: Mapping[int, int]) -> int:
    """The epochs a run of ``batch_size`` is taken to need at least (0: unknown).

    Its own fewest epochs of a converged trial when it has one, even where a
    larger batch size's bound (:func:`epochs_needed`) says more: a batch size
    that did reach the target in E epochs is never stopped on a prediction
    that it needs more. Otherwise the bound from the larger batch sizes.
    """
    own = fewest_epochs.get(batch_size)
    return own if own is not None else epochs_needed(batch_size, fewest_epochs)


def bound_reference(min_cost: float | None, typical_cost: float | None) -> float | None:
    """The cost that ``beta`` multiplies: ``typical_cost`` kept within ``[min_cost, 1.5 min_cost]``.

    ``min_cost`` is the single cheapest converged run, so ``beta * min_cost``
    is tighter than a typical run of the same batch size: one lucky run makes
    its own batch size's ordinary runs look doomed. ``typical_cost`` is the
    mean recorded cost of ``min_cost_batch_size``'s trials (None: use
    ``min_cost``). It never goes below ``min_cost`` (never tighter than the
    paper) nor above ``SURVIVOR_RATIO * min_cost`` (a batch size whose runs
    fail often cannot loosen every bound much: the survivor filter would drop
    a batch size costing that much more than the cheapest).
    """
    if min_cost is None or typical_cost is None:
        return min_cost
    return min(max(min_cost, typical_cost), SURVIVOR_RATIO * min_cost)


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
    typical_cost: float | None = None,
) -> PredictiveVerdict:
    """The paper's answer (:func:`judge_report`), then the predictive rules if it said go on.

    ``last`` is this trial's previous report (None before its first),
    ``fewest_epochs`` maps a batch size to the fewest epochs any of its
    converged trials needed, and ``pruning_round`` is the 0-based round of an
    exploration trial (None for other trials). ``typical_cost`` is the mean
    recorded cost of ``min_cost_batch_size``'s trials (None: none known), which
    :func:`bound_reference` turns into the reference of the ``beta`` bounds.
    The caller persists the returned ``last_report`` and this batch size's
    ``fewest_epochs``.
    """
    reference = bound_reference(min_cost, typical_cost)
    label = "min_cost" if reference == min_cost else "reference cost"
    verdict = judge_report(
        params, min_cost=reference, batch_size=batch_size, time=time, energy=energy,
        metric=metric, current_epoch=current_epoch, reference=label,
    )  # fmt: skip
    cost, fewest = verdict.cost, fewest_epochs.get(batch_size)
    here = LastReport(current_epoch, cost)
    if verdict.stop_train:
        if verdict.converged:
            fewest = current_epoch if fewest is None else min(fewest, current_epoch)
        return PredictiveVerdict(verdict, cost, here, fewest)
    if params.beta_knob is None or min_cost is None or reference is None:
        return PredictiveVerdict(verdict, cost, here, fewest)
    per_epoch = last_epoch_cost(cost, current_epoch, last)
    left = max(0, planned_epochs(batch_size, fewest_epochs) - current_epoch)
    predicted = cost + per_epoch * max(1, left)
    # The paper's rule lets a run train the epoch that crosses the bound, and a run that
    # reaches the target at that epoch leaves its user a model; so the prediction stops only
    # a run that crosses it before its earliest epoch of the target (left >= 2).
    before_target = cost + per_epoch * (left - 1)
    if left >= 2 and before_target > cost_upper_bound(params, reference):
        message = (
            f"Batch size {batch_size} is predicted to exceed the cost upper bound before it "
            f"can reach the target (in {left} more epochs at the earliest): cost {cost:.6g} + "
            f"{left - 1} more epoch(s) of {per_epoch:.6g} = {before_target:.6g} > beta_knob "
            f"{params.beta_knob} * {label} {reference:.6g}."
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

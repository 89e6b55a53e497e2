"""The rule that answers an epoch report: keep training, or stop and why."""

from __future__ import annotations

import math

from app.bandit.cost import zeus_cost
from app.bandit.types import JobParams, StopReason, Verdict


def reached_target(params: JobParams, metric: float) -> bool:
    """Whether ``metric`` meets the target in the job's direction."""
    if params.higher_is_better_metric:
        return metric >= params.target_metric
    return metric <= params.target_metric


def cost_upper_bound(params: JobParams, min_cost: float | None) -> float:
    """``beta * min_cost`` when early stopping is on and a min cost exists, else inf."""
    if params.beta_knob is None or min_cost is None:
        return math.inf
    return params.beta_knob * min_cost


def judge_report(
    params: JobParams,
    *,
    min_cost: float | None,
    batch_size: int,
    time: float,
    energy: float,
    metric: float,
    current_epoch: int,
    reference: str = "min_cost",
) -> Verdict:
    """Decide on a report of cumulative ``time``/``energy`` after ``current_epoch``.

    Training goes on while the cost stays within ``beta * min_cost``, the epoch
    budget is not spent and the target is not reached. Otherwise the trial
    ends; it *converged* only if it reached the target within the cost bound.
    ``reference`` names ``min_cost`` in the message (the predictive policy
    passes another reference cost).
    """
    cost = zeus_cost(energy, time, params.eta_knob, params.max_power)
    bound = cost_upper_bound(params, min_cost)
    within_bound = cost <= bound
    reached = reached_target(params, metric)

    if within_bound and current_epoch < params.max_epochs and not reached:
        return Verdict(
            False, False, cost, "Stop condition not met, keep training.", StopReason.KEEP_TRAINING
        )
    if reached and within_bound:
        return Verdict(
            True, True, cost, "Train succeeded: reached the target metric.", StopReason.CONVERGED
        )
    if not within_bound:
        return Verdict(
            True,
            False,
            cost,
            f"Batch size {batch_size} exceeded the cost upper bound: cost {cost:.6g} > "
            f"beta_knob {params.beta_knob} * {reference} {min_cost:.6g}.",
            StopReason.STOPPED_EARLY,
        )
    return Verdict(
        True,
        False,
        cost,
        f"Train failed to reach the target metric within max_epochs ({params.max_epochs}).",
        StopReason.MAX_EPOCHS,
    )

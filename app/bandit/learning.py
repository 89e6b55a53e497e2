"""What a final report teaches the job: min cost, running statistics, the arm's refit.

The service and the offline simulator both apply a verdict through
:func:`learn`, so the rules of SPEC sections 4 and 6 live in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.bandit.cost import reward
from app.bandit.gaussian_ts import fit_arm, fit_arm_from_stats
from app.bandit.types import ArmPosterior, JobParams, RewardStats, Verdict


@dataclass(frozen=True, slots=True)
class Lesson:
    """The job's state after one trial ended Succeeded."""

    min_cost: float | None
    min_cost_batch_size: int
    stats: RewardStats  # the batch size's running statistics, this reward included
    arm: ArmPosterior | None  # the refitted arm, if the batch size is one


def learn(
    params: JobParams,
    verdict: Verdict,
    *,
    batch_size: int,
    min_cost: float | None,
    min_cost_batch_size: int,
    stats: RewardStats,
    refit: bool,
    earlier_rewards: Sequence[float] = (),
    recorded_cost: float | None = None,
) -> Lesson:
    """Apply a final verdict on a trial of ``batch_size``.

    - Only a converged, cheaper trial moves ``min_cost`` (Zeus lets failed
      ones lower it too).
    - ``refit``: the batch size is an arm of a job in the bandit stage; its
      arm is refitted whatever the trial's type. With ``window_size`` 0 from
      the running statistics (O(1), no history read); otherwise on the
      rewards of the last ``window_size`` Succeeded trials: the caller passes
      the up to ``window_size - 1`` before this one as ``earlier_rewards``.
    - ``recorded_cost``: what the trial counts as in the statistics and the
      arm, if not the cost paid (a predictive stop: its predicted cost, so that
      a batch size stopped early does not look cheap). ``min_cost`` moves on
      the cost paid, by a converged trial, whose two costs are equal.
    """
    value = reward(verdict.cost if recorded_cost is None else recorded_cost)
    if verdict.converged and (min_cost is None or verdict.cost < min_cost):
        min_cost, min_cost_batch_size = verdict.cost, batch_size
    stats = stats.add(value)
    arm = None
    if refit:
        prior = {"prior_mean": params.mab_prior_mean, "prior_precision": params.mab_prior_precision}
        if params.window_size == 0:
            arm = fit_arm_from_stats(batch_size, stats, **prior)
        else:
            keep = params.window_size - 1
            window = [*(earlier_rewards[-keep:] if keep else ()), value]
            arm = fit_arm(batch_size, window, **prior)
    return Lesson(min_cost, min_cost_batch_size, stats, arm)

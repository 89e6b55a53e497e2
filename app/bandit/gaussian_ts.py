"""Gaussian Thompson Sampling with learned reward precision (Zeus, section 4.3).

Each arm (batch size) models its reward (-cost) as Gaussian with unknown mean
and a precision estimated from the arm's own observations; the belief over the
mean is the Normal conjugate posterior
(https://en.wikipedia.org/wiki/Conjugate_prior#When_likelihood_function_is_a_continuous_distribution).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from app.bandit.types import ArmPosterior, RewardStats


def _posterior(
    batch_size: int,
    *,
    count: int,
    mean: float,
    total: float,
    variance: float,
    prior_mean: float,
    prior_precision: float,
) -> ArmPosterior:
    if count == 0:
        return ArmPosterior(batch_size, prior_mean, prior_precision, 0.0, 0)
    reward_precision = math.inf if variance == 0.0 else 1.0 / variance
    if reward_precision == math.inf:
        # All rewards are equal (always so for one observation): sampling
        # returns exactly their mean.
        return ArmPosterior(batch_size, mean, math.inf, math.inf, count)
    param_precision = prior_precision + count * reward_precision
    param_mean = (prior_precision * prior_mean + reward_precision * total) / param_precision
    if not (math.isfinite(param_precision) and math.isfinite(param_mean)):
        # Float overflow on degenerate inputs (variances near zero): the
        # limit of the posterior as its precision grows is the data mean.
        return ArmPosterior(batch_size, mean, math.inf, reward_precision, count)
    return ArmPosterior(batch_size, param_mean, param_precision, reward_precision, count)


def fit_arm(
    batch_size: int,
    rewards: Sequence[float],
    *,
    prior_mean: float,
    prior_precision: float,
) -> ArmPosterior:
    """Fit an arm on ``rewards`` from the prior (Zeus's ``_fit_arm``).

    ``var`` is the population variance; ``reward_precision = 1 / var`` (inf
    when var is 0); ``param_precision = prior_precision + n * reward_precision``
    and ``param_mean = (prior_precision * prior_mean + reward_precision *
    sum(r)) / param_precision``. With no rewards, the arm is the prior.
    """
    values = np.asarray(rewards, dtype=float)
    if values.size == 0:
        return _posterior(
            batch_size, count=0, mean=0.0, total=0.0, variance=0.0,
            prior_mean=prior_mean, prior_precision=prior_precision,
        )  # fmt: skip
    return _posterior(
        batch_size,
        count=int(values.size),
        mean=float(values.mean()),
        total=float(values.sum()),
        variance=float(values.var()),
        prior_mean=prior_mean,
        prior_precision=prior_precision,
    )


def fit_arm_from_stats(
    batch_size: int,
    stats: RewardStats,
    *,
    prior_mean: float,
    prior_precision: float,
) -> ArmPosterior:
    """The same fit as ``fit_arm``, from running statistics of all rewards."""
    return _posterior(
        batch_size,
        count=stats.count,
        mean=stats.mean,
        total=stats.mean * stats.count,
        variance=stats.variance,
        prior_mean=prior_mean,
        prior_precision=prior_precision,
    )


def choose_arm(
    arms: Sequence[ArmPosterior],
    *,
    num_explorations: int,
    rng: np.random.Generator,
) -> int:
    """Pick the batch size to pull next; ``arms`` must be in ascending order.

    First, in a random order (so that concurrent jobs spread out), any arm
    observed fewer than ``num_explorations`` times (or never) is explored.
    Otherwise one sample is drawn per arm from its belief over the mean reward
    and the arm with the largest sample wins (the first one on ties). The draws
    consume ``rng`` exactly as Zeus does, so a seeded job replays Zeus's
    sequence.
    """
    if not arms:
        raise ValueError("choose_arm needs at least one arm")
    by_batch_size = {arm.batch_size: arm for arm in arms}
    order = rng.choice(np.array([arm.batch_size for arm in arms]), len(arms), replace=False)
    for batch_size in order:
        arm = by_batch_size[int(batch_size)]
        if arm.num_observations == 0 or arm.num_observations < num_explorations:
            return arm.batch_size
    samples = [float(rng.normal(arm.param_mean, arm.scale)) for arm in arms]
    best = max(range(len(arms)), key=samples.__getitem__)
    return arms[best].batch_size

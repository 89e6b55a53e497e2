from __future__ import annotations

import math

import numpy as np
import pytest
from zeus._legacy.policy.mab import GaussianTS

from app.bandit import ArmPosterior, RewardStats, choose_arm, fit_arm, fit_arm_from_stats


def test_one_observation_gives_infinite_precision_at_that_reward() -> None:
    arm = fit_arm(32, [-10.0], prior_mean=0.0, prior_precision=0.0)
    assert arm == ArmPosterior(32, -10.0, math.inf, math.inf, 1)
    assert arm.scale == 0.0


def test_the_posterior_follows_the_conjugate_update() -> None:
    rewards = [-10.0, -12.0, -14.0]
    arm = fit_arm(32, rewards, prior_mean=-5.0, prior_precision=0.5)
    variance = float(np.var(rewards))
    reward_precision = 1 / variance
    precision = 0.5 + 3 * reward_precision
    assert arm.reward_precision == pytest.approx(reward_precision)
    assert arm.param_precision == pytest.approx(precision)
    assert arm.param_mean == pytest.approx(
        (0.5 * -5.0 + reward_precision * sum(rewards)) / precision
    )
    assert arm.num_observations == 3


def test_no_observations_is_the_prior() -> None:
    arm = fit_arm(8, [], prior_mean=-3.0, prior_precision=2.0)
    assert arm == ArmPosterior(8, -3.0, 2.0, 0.0, 0)


def test_running_statistics_give_the_same_fit_as_the_full_history() -> None:
    rng = np.random.default_rng(1)
    rewards = list(rng.normal(-1000.0, 50.0, size=200))
    stats = RewardStats()
    for r in rewards:
        stats = stats.add(r)
    assert stats.variance == pytest.approx(float(np.var(rewards)))
    full = fit_arm(64, rewards, prior_mean=0.0, prior_precision=0.1)
    running = fit_arm_from_stats(64, stats, prior_mean=0.0, prior_precision=0.1)
    assert running.param_mean == pytest.approx(full.param_mean, rel=1e-12)
    assert running.param_precision == pytest.approx(full.param_precision, rel=1e-9)


def test_equal_rewards_keep_an_exactly_zero_variance_in_running_statistics() -> None:
    stats = RewardStats().add(-7.5).add(-7.5).add(-7.5)
    arm = fit_arm_from_stats(64, stats, prior_mean=0.0, prior_precision=0.0)
    assert (arm.param_mean, arm.param_precision) == (-7.5, math.inf)


def test_unexplored_arms_are_chosen_before_any_sampling() -> None:
    arms = [
        ArmPosterior(16, -1.0, 1.0, 1.0, 5),
        ArmPosterior(32, -100.0, 1.0, 1.0, 1),  # explored once, two are required
        ArmPosterior(64, -1.0, 1.0, 1.0, 5),
    ]
    for seed in range(20):
        rng = np.random.default_rng(seed)
        assert choose_arm(arms, num_explorations=2, rng=rng) == 32


def test_an_arm_never_observed_counts_as_unexplored_even_with_zero_explorations() -> None:
    arms = [ArmPosterior(16, -1.0, math.inf, math.inf, 3), ArmPosterior(32, 0.0, 0.0, 0.0, 0)]
    assert choose_arm(arms, num_explorations=0, rng=np.random.default_rng(0)) == 32


def test_sampling_picks_the_clearly_best_arm() -> None:
    arms = [
        ArmPosterior(16, -500.0, 1.0, 1.0, 4),
        ArmPosterior(32, -100.0, 1.0, 1.0, 4),
        ArmPosterior(64, -900.0, 1.0, 1.0, 4),
    ]
    rng = np.random.default_rng(3)
    assert {choose_arm(arms, num_explorations=2, rng=rng) for _ in range(50)} == {32}


def test_choices_consume_the_generator_exactly_like_zeus_legacy_gaussian_ts() -> None:
    arms_bs = [16, 32, 64]
    rewards = {16: [-30.0, -34.0], 32: [-20.0, -29.0, -25.0], 64: [-26.0, -27.0]}
    precisions = [1 / float(np.var(rewards[bs])) for bs in arms_bs]
    zeus = GaussianTS(arms_bs, precisions, num_exploration=2, seed=11, verbose=False)
    for bs in arms_bs:
        zeus.fit_arm(bs, np.array(rewards[bs]), reset=True)
    ours = [fit_arm(bs, rewards[bs], prior_mean=0.0, prior_precision=0.0) for bs in arms_bs]
    rng = np.random.default_rng(11)
    theirs = [int(zeus.predict()) for _ in range(200)]
    mine = [choose_arm(ours, num_explorations=2, rng=rng) for _ in range(200)]
    assert mine == theirs
    assert len(set(mine)) > 1  # the draws really differ from one call to the next

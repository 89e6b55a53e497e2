from __future__ import annotations

import math

import pytest

from app.bandit import JobParams, StopReason, Verdict, judge_report, zeus_cost
from app.bandit.stopping import cost_upper_bound

PARAMS = JobParams(batch_sizes=(32, 64), default_batch_size=64, max_epochs=5, max_power=300.0)


def verdict(params: JobParams = PARAMS, *, min_cost: float | None = None, metric: float = 0.1,
            epoch: int = 1, time: float = 10.0, energy: float = 1000.0) -> Verdict:  # fmt: skip
    return judge_report(
        params, min_cost=min_cost, batch_size=64, time=time, energy=energy, metric=metric,
        current_epoch=epoch,
    )  # fmt: skip


def test_cost_weighs_energy_against_time_at_max_power() -> None:
    assert zeus_cost(1000.0, 10.0, 0.5, 300.0) == pytest.approx(0.5 * 1000 + 0.5 * 300 * 10)
    assert zeus_cost(1000.0, 10.0, 1.0, 300.0) == 1000.0
    assert zeus_cost(1000.0, 10.0, 0.0, 300.0) == 3000.0


def test_training_goes_on_below_target_within_budget_and_bound() -> None:
    v = verdict(metric=0.1, epoch=1)
    assert (v.stop_train, v.converged) == (False, False)
    assert v.cost == pytest.approx(2000.0)


def test_reaching_the_target_stops_and_converges() -> None:
    v = verdict(metric=0.6, epoch=2)
    assert (v.stop_train, v.converged) == (True, True)
    assert "succeeded" in v.message


def test_spending_max_epochs_without_the_target_stops_unconverged() -> None:
    v = verdict(metric=0.1, epoch=5)
    assert (v.stop_train, v.converged) == (True, False)
    assert "max_epochs" in v.message


def test_exceeding_beta_times_min_cost_stops_unconverged_even_if_target_reached() -> None:
    # cost 2000 > 2.0 * 900
    v = verdict(min_cost=900.0, metric=0.9)
    assert (v.stop_train, v.converged) == (True, False)
    assert "cost upper bound" in v.message


def test_cost_exactly_at_the_bound_is_within_it() -> None:
    v = verdict(min_cost=1000.0, metric=0.9)  # cost 2000 == 2.0 * 1000
    assert (v.stop_train, v.converged) == (True, True)


def test_null_beta_disables_early_stopping() -> None:
    params = JobParams(batch_sizes=(64,), default_batch_size=64, beta_knob=None)
    assert cost_upper_bound(params, 1.0) == math.inf
    assert verdict(params, min_cost=1.0, metric=0.1).stop_train is False


def test_lower_is_better_metrics_reach_the_target_from_above() -> None:
    params = JobParams(
        batch_sizes=(64,), default_batch_size=64, target_metric=40.0,
        higher_is_better_metric=False,
    )  # fmt: skip
    assert verdict(params, metric=41.0).stop_train is False
    assert verdict(params, metric=40.0).converged is True


def test_every_verdict_names_its_reason() -> None:
    assert verdict(metric=0.1, epoch=1).reason is StopReason.KEEP_TRAINING
    assert verdict(metric=0.6, epoch=2).reason is StopReason.CONVERGED
    assert verdict(metric=0.1, epoch=5).reason is StopReason.MAX_EPOCHS
    # Over the bound wins over the spent budget: the cost is why it stopped.
    assert verdict(min_cost=900.0, metric=0.1, epoch=5).reason is StopReason.STOPPED_EARLY

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import pytest

from app.bandit import (
    SURVIVOR_RATIO,
    Exploration,
    JobParams,
    LastReport,
    Policy,
    PredictiveVerdict,
    TrialType,
    bound_reference,
    decide,
    epochs_needed,
    judge_report_predictive,
    last_epoch_cost,
    planned_epochs,
    pruning_walk,
    survivors,
)

# eta 0.5 and no energy: cost = 0.5 * 200 W * time = 100 * time, so time t costs 100 t.
PARAMS = JobParams(
    batch_sizes=(16, 32, 64), default_batch_size=32, max_epochs=10, max_power=200.0,
    policy=Policy.PREDICTIVE,
)  # fmt: skip


def judge(
    cost: float,
    epoch: int,
    *,
    last: LastReport | None = None,
    min_cost: float | None = 1000.0,
    fewest: Mapping[int, int] | None = None,
    pruning_round: int | None = None,
    metric: float = 0.1,
    params: JobParams = PARAMS,
    batch_size: int = 32,
    typical: float | None = None,
) -> PredictiveVerdict:
    return judge_report_predictive(
        params, min_cost=min_cost, batch_size=batch_size, time=cost / 100.0, energy=0.0,
        metric=metric, current_epoch=epoch, last=last, fewest_epochs=fewest or {},
        pruning_round=pruning_round, typical_cost=typical,
    )  # fmt: skip


# Epochs still needed


def test_nothing_converged_bounds_nothing() -> None:
    assert epochs_needed(32, {}) == 0


def test_a_batch_sizes_own_fewest_epochs_bound_it() -> None:
    assert epochs_needed(32, {32: 7}) == 7


def test_a_larger_batch_size_bounds_a_smaller_one_scaled_down_by_their_ratio() -> None:
    # 64 needed 9 epochs = 9 N / 64 steps; 32 needs as many steps: >= 9 * 32 / 64 = 4.5 epochs.
    assert epochs_needed(32, {64: 9}) == 4
    assert epochs_needed(16, {64: 9}) == 2
    assert epochs_needed(16, {64: 3}) == 0  # 0.75 rounds down: no bound


def test_a_smaller_batch_size_bounds_nothing() -> None:
    assert epochs_needed(64, {16: 40, 32: 20}) == 0


def test_the_tightest_bound_wins() -> None:
    assert epochs_needed(32, {32: 3, 64: 9, 128: 40, 16: 99}) == 10


def test_a_batch_size_s_own_history_wins_over_a_larger_one_s_bound() -> None:
    # 64 reached the target in 4 epochs; 128's 10 would say 64 needs 5.
    assert epochs_needed(64, {64: 4, 128: 10}) == 5
    assert planned_epochs(64, {64: 4, 128: 10}) == 4
    assert planned_epochs(64, {128: 10}) == 5  # no history of its own: the bound
    assert planned_epochs(64, {}) == 0


def test_a_run_its_own_history_says_converges_is_not_stopped_on_another_size_s_bound() -> None:
    """Issue 21: a real job's best batch size stopped at epoch 2 of the 4 it needed.

    "cost 102.9 + 3 more epoch(s) of 52.3 = 259.9 > beta_knob 1.5 * min_cost 166.1":
    the 3 epochs came from 128's single 10-epoch run, although 64 had reached
    the target in 4 epochs itself. (Since the prediction stops only a run that
    crosses the bound before its earliest epoch of the target, 128's 10 epochs
    alone no longer stop it either: 102.9 + 2 x 52.3 = 207.5 <= 249.15 at epoch
    3, and the paper's rule judges epoch 4; a 12-epoch run of 128 does.)
    """
    params = replace(PARAMS, batch_sizes=(32, 64, 128), default_batch_size=128, beta_knob=1.5)
    last, min_cost = LastReport(1, 50.6), 166.1

    def at_epoch_2(fewest: dict[int, int]) -> PredictiveVerdict:
        return judge(102.9, 2, last=last, min_cost=min_cost, fewest=fewest, params=params,
                     batch_size=64)  # fmt: skip

    assert at_epoch_2({128: 10}).verdict.stop_train is False
    alone = at_epoch_2({128: 12})  # nothing of its own: the bound from 128 (6 epochs) stands
    assert alone.verdict.stop_train is True
    assert "3 more epoch(s) of 52.3 = 259.8" in alone.verdict.message
    assert alone.recorded_cost == pytest.approx(102.9 + 4 * 52.3)  # to its earliest target
    own = at_epoch_2({64: 4, 128: 12})  # 102.9 + 1 x 52.3 = 155.2 <= 249.15
    assert own.verdict.stop_train is False and own.recorded_cost == pytest.approx(102.9)


def test_the_reference_is_a_typical_run_within_one_and_a_half_min_costs() -> None:
    assert bound_reference(None, 500.0) is None
    assert bound_reference(100.0, None) == 100.0
    assert bound_reference(100.0, 80.0) == 100.0  # never tighter than the paper
    assert bound_reference(100.0, 120.0) == 120.0
    assert bound_reference(100.0, 400.0) == SURVIVOR_RATIO * 100.0


def test_one_lucky_run_does_not_tighten_the_bound_for_typical_ones() -> None:
    # min_cost 1000 was a lucky run; the batch size's runs cost 1300 on average.
    v = judge(2200.0, 6, last=LastReport(5, 1900.0))  # > 2 x 1000: the paper's rule stops it
    assert (v.verdict.stop_train, v.verdict.converged) == (True, False)
    going = judge(2200.0, 6, last=LastReport(5, 1900.0), typical=1300.0)  # 2500 <= 2600
    assert going.verdict.stop_train is False
    over = judge(2700.0, 7, last=LastReport(6, 2400.0), typical=1300.0)
    assert over.verdict.stop_train is True
    assert "reference cost 1300" in over.verdict.message


# The last epoch's cost


def test_the_first_report_has_no_last_epoch_cost() -> None:
    assert last_epoch_cost(500.0, 1, None) == 0.0
    assert last_epoch_cost(500.0, 3, None) == 0.0


def test_the_last_epoch_cost_is_per_epoch_since_the_previous_report() -> None:
    assert last_epoch_cost(500.0, 3, LastReport(2, 350.0)) == 150.0
    assert last_epoch_cost(500.0, 5, LastReport(2, 350.0)) == 50.0  # epochs 3-5 unreported


def test_a_report_that_does_not_advance_or_lowers_the_cost_adds_nothing() -> None:
    assert last_epoch_cost(500.0, 2, LastReport(2, 350.0)) == 0.0
    assert last_epoch_cost(500.0, 1, LastReport(2, 350.0)) == 0.0
    assert last_epoch_cost(300.0, 3, LastReport(2, 350.0)) == 0.0


# The predictive stop


def test_the_first_report_is_judged_by_the_papers_rule_alone() -> None:
    # 1500 + one more epoch of 1500 would pass 2 * 1000, but the first epoch's cost is unknown.
    v = judge(1500.0, 1)
    assert (v.verdict.stop_train, v.verdict.converged) == (False, False)
    assert v.recorded_cost == 1500.0
    assert v.last_report == LastReport(1, 1500.0)


def test_a_run_stops_when_it_would_pass_beta_times_min_cost_before_its_target() -> None:
    # 32 needs 4 epochs at least: 1200 + (4 - 2 - 1) epochs of 600 = 1800 <= 2000 at epoch 3.
    going = judge(1200.0, 2, last=LastReport(1, 600.0), fewest={32: 4})
    assert going.verdict.stop_train is False
    assert going.last_report == LastReport(2, 1200.0)
    v = judge(1200.0, 2, last=LastReport(1, 600.0), fewest={32: 5})  # 1200 + 2 x 600 > 2000
    assert (v.verdict.stop_train, v.verdict.converged) == (True, False)
    assert v.verdict.cost == 1200.0  # paid
    assert v.recorded_cost == 3000.0  # what the arm statistics see: to its earliest target
    assert "predicted to exceed the cost upper bound before it" in v.verdict.message
    assert v.last_report == LastReport(2, 1200.0)


def test_a_run_that_may_reach_the_target_at_its_next_epoch_is_left_to_the_papers_rule() -> None:
    # 1800 + 600 = 2400 > 2000: the old prediction stopped it here; the paper's rule judges 2400.
    for fewest in ({}, {32: 3}, {32: 2}):
        v = judge(1800.0, 3, last=LastReport(2, 1200.0), fewest=fewest)
        assert v.verdict.stop_train is False


def test_a_run_that_may_reach_the_target_at_the_crossing_epoch_is_not_stopped() -> None:
    """Issue 21: the prediction stopped a run one epoch before it crossed the bound.

    The paper's rule lets it train that epoch; a run that reaches the target
    there ends over the bound (not converged for the service) but leaves its
    user a model, while the run stopped by the prediction leaves none and its
    recurrence pays a retry. 32 reached the target in 3 epochs before; this
    run is at epoch 2 with 1500 paid and 750 per epoch: 2250 at epoch 3.
    """
    going = judge(1500.0, 2, last=LastReport(1, 750.0), fewest={32: 3})
    assert (going.verdict.stop_train, going.recorded_cost) == (False, 1500.0)
    assert judge(1500.0, 2, last=LastReport(1, 750.0)).verdict.stop_train is False  # no history
    # Epoch 3: the target, over the bound. The paper's answer, as under zeus; the model is there.
    v = judge(2250.0, 3, last=LastReport(2, 1500.0), fewest={32: 3}, metric=0.6)
    assert (v.verdict.stop_train, v.verdict.converged) == (True, False)
    assert "exceeded the cost upper bound" in v.verdict.message


def test_the_prediction_never_stops_a_run_the_papers_rule_lets_reach_the_target() -> None:
    """Every run the paper's rule lets reach the target reaches it under the prediction too.

    Runs of constant epoch cost d reaching the target at epoch E, with the
    batch size's own fewest epochs F <= E (its history is a lower bound):
    the paper's rule lets the run train while its cost before the epoch is
    within beta * min_cost; the prediction must not stop it earlier.
    """
    bound = 2.0 * 1000.0
    checked = 0
    for d in np.linspace(100.0, 1100.0, 41):
        for reach in range(1, PARAMS.max_epochs + 1):
            if d * (reach - 1) > bound:  # the paper's rule stops it before the target
                continue
            for fewest in ({}, *({32: f} for f in range(1, reach + 1))):
                last: LastReport | None = None
                for epoch in range(1, reach + 1):
                    v = judge(d * epoch, epoch, last=last, fewest=fewest,
                              metric=0.6 if epoch == reach else 0.1)  # fmt: skip
                    last = v.last_report
                    if v.verdict.stop_train:
                        break
                assert epoch == reach, (d, reach, fewest, v.verdict.message)
                checked += 1
    assert checked > 500


def test_a_prediction_exactly_at_the_bound_goes_on() -> None:
    v = judge(1400.0, 2, last=LastReport(1, 800.0), fewest={32: 4})  # 1400 + 1 x 600 = 2000
    assert v.verdict.stop_train is False


def test_the_history_stops_a_run_sooner() -> None:
    # After 2 epochs of 300: one more epoch makes 900; 6 more (of 8 needed) make 2400.
    no_history = judge(600.0, 2, last=LastReport(1, 300.0))
    assert no_history.verdict.stop_train is False  # 600 + 300 <= 2000
    v = judge(600.0, 2, last=LastReport(1, 300.0), fewest={32: 8})  # 600 + 6 * 300 = 2400
    assert v.verdict.stop_train is True
    assert v.recorded_cost == 2400.0
    within = judge(600.0, 2, last=LastReport(1, 300.0), fewest={32: 6})  # 600 + 1200 = 1800
    assert within.verdict.stop_train is False


def test_past_its_history_a_run_is_judged_by_the_papers_rule_alone() -> None:
    # The history says 4 epochs; this run is at epoch 7 and still short of the target.
    v = judge(1800.0, 7, last=LastReport(6, 1500.0), fewest={32: 4})
    assert (v.verdict.stop_train, v.recorded_cost) == (False, 1800.0)  # 2100 > 2000 next epoch
    over = judge(2100.0, 8, last=LastReport(7, 1800.0), fewest={32: 4})
    assert (over.verdict.stop_train, over.recorded_cost) == (True, 2100.0)
    assert "exceeded the cost upper bound" in over.verdict.message


def test_no_min_cost_yet_means_no_predictive_stop() -> None:
    v = judge(9000.0, 5, last=LastReport(4, 7000.0), min_cost=None, fewest={32: 9})
    assert v.verdict.stop_train is False
    assert v.last_report == LastReport(5, 9000.0)


def test_null_beta_disables_every_early_stop() -> None:
    params = replace(PARAMS, beta_knob=None)
    v = judge(1900.0, 2, last=LastReport(1, 950.0), fewest={32: 9}, pruning_round=0,
              params=params)  # fmt: skip
    assert v.verdict.stop_train is False
    assert v.recorded_cost == 1900.0


def test_the_papers_answer_comes_first() -> None:
    # Reaching the target within the bound converges, whatever a prediction would say.
    v = judge(1500.0, 5, last=LastReport(4, 1200.0), fewest={32: 9}, metric=0.6)
    assert (v.verdict.stop_train, v.verdict.converged) == (True, True)
    assert v.recorded_cost == 1500.0
    over = judge(2100.0, 5, last=LastReport(4, 1800.0))  # past the bound already
    assert (over.verdict.stop_train, over.verdict.converged) == (True, False)
    assert over.recorded_cost == 2100.0
    assert "exceeded the cost upper bound" in over.verdict.message


# The fewest epochs of a converged trial


def test_a_converged_trial_lowers_its_batch_sizes_fewest_epochs() -> None:
    assert judge(900.0, 5, metric=0.6).fewest_epochs == 5
    assert judge(900.0, 5, metric=0.6, fewest={32: 7}).fewest_epochs == 5
    assert judge(900.0, 5, metric=0.6, fewest={32: 4}).fewest_epochs == 4


def test_other_outcomes_leave_the_fewest_epochs_alone() -> None:
    assert judge(900.0, 5).fewest_epochs is None  # goes on
    assert judge(900.0, 5, fewest={32: 4, 64: 2}).fewest_epochs == 4
    assert judge(900.0, 10, fewest={32: 4}).fewest_epochs == 4  # max_epochs, not converged
    assert judge(2100.0, 5, metric=0.6, fewest={32: 9}).fewest_epochs == 9  # over the bound


# The round stop


def test_an_exploration_that_cannot_survive_its_round_stops() -> None:
    # Round 1 of 2: 1200 + (6 - 2) epochs of 100 = 1600 > 1.5 * 1000; the beta rule says go on.
    v = judge(1200.0, 2, last=LastReport(1, 1100.0), fewest={32: 6}, pruning_round=0)
    assert (v.verdict.stop_train, v.verdict.converged) == (True, False)
    assert "cannot survive pruning round 1" in v.verdict.message
    assert v.recorded_cost == 1600.0
    assert judge(1200.0, 2, last=LastReport(1, 1100.0), fewest={32: 5},
                 pruning_round=0).verdict.stop_train is False  # 1500: it could  # fmt: skip


def test_the_round_stop_counts_only_the_epochs_the_history_requires() -> None:
    # 1450 + one more epoch of 150 would pass 1.5 * 1000, but the run may reach the target then.
    assert judge(1450.0, 2, last=LastReport(1, 1300.0), pruning_round=0).verdict.stop_train is False
    v = judge(1510.0, 3, last=LastReport(2, 1450.0), pruning_round=0)  # already past 1500
    assert v.verdict.stop_train is True
    assert v.recorded_cost == 1570.0  # the predicted cost: at least one more epoch


def test_the_round_stop_spares_the_last_round_and_other_trials() -> None:
    for pruning_round in (1, None):
        v = judge(1600.0, 2, last=LastReport(1, 1500.0), pruning_round=pruning_round)
        assert v.verdict.stop_train is False
    three_rounds = replace(PARAMS, num_pruning_rounds=3)
    assert judge(1600.0, 2, last=LastReport(1, 1500.0), pruning_round=1,
                 params=three_rounds).verdict.stop_train is True  # fmt: skip


# The survivor filter


def test_survivors_are_within_the_ratio_of_the_cheapest() -> None:
    assert SURVIVOR_RATIO == 1.5
    assert survivors({64: 100.0, 32: 150.0, 16: 150.01, 128: 120.0}) == (32, 64, 128)
    assert survivors({8: 10.0}) == (8,)
    assert survivors({}) == ()
    assert survivors({8: 10.0, 16: 12.0}, ratio=1.1) == (8,)


def walk(policy: Policy, costs: Mapping[int, float]) -> tuple[list[int], tuple[int, ...]]:
    """Drive the walk over three batch sizes to the end, every exploration converging."""
    p = replace(PARAMS, policy=policy)
    history: dict[int, list[Exploration]] = {}
    order: list[int] = []
    for number in range(1, 20):
        step = pruning_walk(p, history, min_cost_batch_size=32)
        if step.batch_size is None:
            return order, step.arms
        history.setdefault(step.batch_size, []).append(
            Exploration(number, step.batch_size, False, True, costs[step.batch_size])
        )
        order.append(step.batch_size)
    raise AssertionError("the walk did not end")


def test_the_filter_drops_expensive_survivors_before_round_two_and_from_the_arms() -> None:
    costs = {16: 160.0, 32: 120.0, 64: 100.0}  # 16 costs 1.6 x the cheapest
    assert walk(Policy.ZEUS, costs) == ([32, 16, 64, 64, 32, 16], (16, 32, 64))
    # Round 2 starts from the cheapest, 64, and never sees 16 again.
    assert walk(Policy.PREDICTIVE, costs) == ([32, 16, 64, 64, 32], (32, 64))


def test_the_filter_also_applies_to_the_last_rounds_survivors() -> None:
    # Round 1: all within 1.5x. Round 2 is the same walk, the same costs: nothing dropped.
    assert walk(Policy.PREDICTIVE, {16: 140.0, 32: 120.0, 64: 100.0})[1] == (16, 32, 64)
    p = replace(PARAMS, num_pruning_rounds=1)
    history = {
        bs: [Exploration(n, bs, False, True, c)]
        for n, (bs, c) in enumerate({32: 100.0, 16: 151.0, 64: 120.0}.items(), 1)
    }
    assert pruning_walk(p, history, min_cost_batch_size=32).arms == (32, 64)
    zeus = replace(p, policy=Policy.ZEUS)
    assert pruning_walk(zeus, history, min_cost_batch_size=32).arms == (16, 32, 64)


def test_explorations_carry_their_pruning_round() -> None:
    rng = np.random.default_rng(0)
    first = decide(PARAMS, in_bandit_stage=False, min_cost_batch_size=32, explorations={},
                   arms=[], rng=rng)  # fmt: skip
    assert (first.trial_type, first.pruning_round) == (TrialType.EXPLORATION, 0)
    running = {32: [Exploration(1, 32, dispatched=True)]}
    concurrent = decide(PARAMS, in_bandit_stage=False, min_cost_batch_size=32,
                        explorations=running, arms=[], rng=rng)  # fmt: skip
    assert (concurrent.trial_type, concurrent.pruning_round) == (TrialType.CONCURRENT, None)
    done = {bs: [Exploration(bs, bs, False, True, 100.0)] for bs in (16, 32, 64)}
    again = decide(PARAMS, in_bandit_stage=False, min_cost_batch_size=32, explorations=done,
                   arms=[], rng=rng)  # fmt: skip
    assert (again.batch_size, again.pruning_round) == (32, 1)  # round 2 from the first cheapest


@pytest.mark.parametrize("policy", list(Policy))
def test_the_bandit_stage_carries_no_round(policy: Policy) -> None:
    done = {bs: [Exploration(bs + r, bs, False, True, 100.0) for r in (0, 1)] for bs in (16, 32)}
    p = replace(PARAMS, batch_sizes=(16, 32), policy=policy)
    decision = decide(p, in_bandit_stage=False, min_cost_batch_size=32, explorations=done,
                      arms=[], rng=np.random.default_rng(0))  # fmt: skip
    assert (decision.trial_type, decision.pruning_round) == (TrialType.MAB, None)
    assert decision.new_arms is not None

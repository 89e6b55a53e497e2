"""The job-group rules of app.bandit.groups, as pure functions."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from app.bandit import (
    CHECK_EPOCH,
    Exploration,
    GroupBatchSize,
    GroupKnowledge,
    JobParams,
    LastReport,
    Policy,
    StopReason,
    TrialType,
    decide,
    group_lesson,
    judge_member,
    judge_report,
    pruning_walk,
    sibling_best,
    walk_start,
)
from app.bandit.groups import judge_group, reference_cost

# eta 0.5 and no energy: cost = 0.5 * 200 W * time = 100 * time.
PARAMS = JobParams(batch_sizes=(16, 32, 64), default_batch_size=32, max_epochs=10,
                   max_power=200.0)  # fmt: skip


def knows(predicted: dict[int, float] | None = None, **epochs: int) -> GroupKnowledge:
    """A group whose converged runs of batch size ``b<size>`` needed ``epochs`` at fewest."""
    stats = {int(k[1:]): GroupBatchSize(1, 0, 1, e, e) for k, e in epochs.items()}
    return GroupKnowledge(stats, predicted or {})


def member(
    cost: float,
    epoch: int,
    *,
    group: GroupKnowledge,
    last: LastReport | None = None,
    min_cost: float | None = 1000.0,
    pruning_round: int | None = None,
    params: JobParams = PARAMS,
    batch_size: int = 32,
    metric: float = 0.1,
) -> tuple[bool, bool, float, float | None]:
    judged = judge_member(
        params, min_cost=min_cost, batch_size=batch_size, time=cost / 100.0, energy=0.0,
        metric=metric, current_epoch=epoch, last=last, fewest_epochs={},
        pruning_round=pruning_round, group=group,
    )  # fmt: skip
    v = judged.verdict
    return v.stop_train, v.converged, judged.recorded_cost, judged.predicted_cost


def test_statistics_count_runs_exhausted_and_converged_epochs() -> None:
    stats = GroupBatchSize()
    converged = judge_report(PARAMS, min_cost=None, batch_size=32, time=1.0, energy=0.0,
                             metric=0.95, current_epoch=6)  # fmt: skip
    spent = judge_report(PARAMS, min_cost=None, batch_size=32, time=1.0, energy=0.0,
                         metric=0.1, current_epoch=10)  # fmt: skip
    stopped = replace(spent, reason=StopReason.STOPPED_EARLY)
    stats = group_lesson(stats, converged, current_epoch=6)
    stats = group_lesson(stats, converged, current_epoch=4)
    stats = group_lesson(stats, spent, current_epoch=10)
    stats = group_lesson(stats, stopped, current_epoch=3)
    assert stats == GroupBatchSize(runs=4, exhausted=1, converged=2, min_epochs=4, total_epochs=10)
    assert stats.mean_epochs == 5.0 and not stats.never_converged


def test_a_batch_size_that_ran_and_never_converged_anywhere_is_never_converged() -> None:
    assert GroupBatchSize(runs=1, exhausted=1).never_converged  # out of epochs
    assert GroupBatchSize(runs=3).never_converged  # stopped for its cost, three times
    assert not GroupBatchSize().never_converged  # never ran: nothing known
    assert not GroupBatchSize(runs=2, exhausted=1, converged=1, min_epochs=5).never_converged


def test_the_walk_starts_at_the_sibling_s_best_when_this_job_can_train_with_it() -> None:
    assert walk_start(PARAMS, 16) == 16
    assert walk_start(PARAMS, 48) == 32 and walk_start(PARAMS, None) == 32
    assert sibling_best([(3, 16), (7, None), (5, 64), (5, 32)]) == 64  # most trials, first
    assert sibling_best([(3, None)]) is None
    step = pruning_walk(PARAMS, {}, min_cost_batch_size=32, start_batch_size=16)
    assert (step.batch_size, step.state.default_batch_size) == (16, 16)


def done(number: int, bs: int, converged: bool, cost: float = 100.0) -> Exploration:
    return Exploration(number, bs, dispatched=False, converged=converged, cost=cost)


def test_the_walk_treats_a_never_converged_batch_size_as_not_converged_without_a_trial() -> None:
    explored = {32: [done(1, 32, True)]}
    plain = pruning_walk(PARAMS, explored, min_cost_batch_size=32)
    assert (plain.batch_size, plain.trial_type) == (16, TrialType.EXPLORATION)
    grouped = pruning_walk(
        PARAMS, explored, min_cost_batch_size=32, never_converged=frozenset({16})
    )
    assert (grouped.batch_size, grouped.trial_type) == (64, TrialType.EXPLORATION)
    # The job's own exploration of it counts, whatever the group says.
    own = {**explored, 16: [done(2, 16, True, 50.0)]}
    walked = pruning_walk(PARAMS, own, min_cost_batch_size=32, never_converged=frozenset({16}))
    assert walked.batch_size == 64


def test_a_round_the_group_alone_would_leave_empty_is_walked_without_it() -> None:
    failed = {32: [done(1, 32, False)]}
    step = pruning_walk(PARAMS, failed, min_cost_batch_size=32, never_converged=frozenset({64}))
    assert (step.batch_size, step.trial_type) == (64, TrialType.EXPLORATION)
    # Both walked and failed: the round is walked again, with the group's knowledge first.
    again = pruning_walk(PARAMS, {**failed, 64: [done(2, 64, False)]}, min_cost_batch_size=32,
                         never_converged=frozenset({64}))  # fmt: skip
    assert (again.batch_size, again.state.attempt) == (32, 1)


def test_without_a_group_decide_is_the_paper_s() -> None:
    explored = {32: [done(1, 32, True)], 16: [done(2, 16, False)]}
    for group in (None, GroupKnowledge()):
        decision = decide(PARAMS, in_bandit_stage=False, min_cost_batch_size=32,
                          explorations=explored, arms=(), rng=np.random.default_rng(1),
                          group=group)  # fmt: skip
        assert (decision.batch_size, decision.trial_type) == (64, TrialType.EXPLORATION)


def test_the_group_stop_waits_for_epoch_two_a_bound_and_the_job_s_own_min_cost() -> None:
    group = knows(b32=8)  # 32 needs >= 8 epochs: predicted = cost + per-epoch x (8 - epoch)
    assert member(1500.0, 1, group=group)[0] is False  # epoch 1: no check
    assert CHECK_EPOCH == 2
    # Epoch 2 at 500 an epoch: 1000 + 6 x 500 = 4000 > 2 x 1000: stopped, counted at 4000.
    stop, converged, recorded, predicted = member(1000.0, 2, group=group,
                                                  last=LastReport(1, 500.0))  # fmt: skip
    assert (stop, converged, recorded, predicted) == (True, False, 4000.0, 4000.0)
    assert member(1000.0, 2, group=knows(), last=LastReport(1, 500.0))[0] is False  # no bound
    assert member(1000.0, 2, group=knows(b16=8), last=LastReport(1, 500.0))[0] is False
    assert member(1000.0, 2, group=group, last=LastReport(1, 500.0), min_cost=None)[0] is False
    unbounded = replace(PARAMS, beta_knob=None)
    assert member(1000.0, 2, group=group, last=LastReport(1, 500.0), params=unbounded)[0] is False


def test_a_larger_batch_size_s_epochs_bound_a_smaller_one_s() -> None:
    # 64 converged in 8 epochs somewhere: 32 needs >= 4. 600 + 2 x 300 = 1200 <= 2 x 1000.
    assert member(600.0, 2, group=knows(b64=8), last=LastReport(1, 300.0))[0] is False
    # 900 + 2 x 450 = 1800 <= 2000, but > 1.5 x 1000 in a round before the last.
    assert member(900.0, 2, group=knows(b64=8), last=LastReport(1, 450.0))[0] is False
    early = member(900.0, 2, group=knows(b64=8), last=LastReport(1, 450.0), pruning_round=0)
    assert early[:3] == (True, False, 1800.0)
    last_round = member(900.0, 2, group=knows(b64=8), last=LastReport(1, 450.0), pruning_round=1)
    assert last_round[0] is False


def test_the_reference_is_the_smaller_of_min_cost_and_recorded_predictions() -> None:
    assert reference_cost(1000.0, {16: 800.0, 64: 1200.0}) == 800.0
    assert reference_cost(None, {}) is None
    group = knows({16: 700.0}, b32=4)
    # 1000 + 2 x 500 = 2000 <= 2 x 1000 but > 2 x 700.
    assert member(1000.0, 2, group=group, last=LastReport(1, 500.0))[0] is True
    verdict = judge_report(PARAMS, min_cost=1000.0, batch_size=32, time=10.0, energy=0.0,
                           metric=0.1, current_epoch=2)  # fmt: skip
    assert judge_group(PARAMS, verdict, batch_size=32, current_epoch=2, last=LastReport(1, 500.0),
                       min_cost=1000.0, pruning_round=None, group=None) is None  # fmt: skip


def test_a_converged_run_records_its_cost_as_its_prediction() -> None:
    stop, converged, recorded, predicted = member(900.0, 3, group=knows(b32=3), metric=0.95)
    assert (stop, converged, recorded, predicted) == (True, True, 900.0, 900.0)


def test_the_predictive_policy_reads_the_group_s_epochs_but_keeps_its_own() -> None:
    params = replace(PARAMS, policy=Policy.PREDICTIVE)
    judged = judge_member(
        params, min_cost=1000.0, batch_size=32, time=8.0, energy=0.0, metric=0.1,
        current_epoch=1, last=None, fewest_epochs={}, pruning_round=None, group=knows(b32=9),
    )  # fmt: skip
    # The predictive stop with the group's bound: 800 + 0 x 8 <= 2000 on a first report;
    # at epoch 2 with 500 an epoch: 1300 + 7 x 500 = 4800 > 2000.
    assert judged.verdict.stop_train is False and judged.fewest_epochs is None
    later = judge_member(
        params, min_cost=1000.0, batch_size=32, time=13.0, energy=0.0, metric=0.1,
        current_epoch=2, last=judged.last_report, fewest_epochs={64: 3}, pruning_round=None,
        group=knows(b32=9),
    )  # fmt: skip
    assert later.verdict.stop_train is True and later.recorded_cost == pytest.approx(4800.0)
    converged = judge_member(
        params, min_cost=1000.0, batch_size=32, time=5.0, energy=0.0, metric=0.95,
        current_epoch=3, last=None, fewest_epochs={32: 5}, pruning_round=None, group=knows(b32=2),
    )  # fmt: skip
    assert converged.fewest_epochs == 3  # its own 5, lowered by this run, not the group's 2

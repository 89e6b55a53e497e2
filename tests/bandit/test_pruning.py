from __future__ import annotations

from collections.abc import Callable

import numpy as np

from app.bandit import ROUND_ATTEMPTS, Exploration, JobParams, TrialType, decide, pruning_walk
from app.bandit.pruning import PruningStep

BATCH_SIZES = (16, 32, 64, 128, 256)


def params(rounds: int = 2, default: int = 64) -> JobParams:
    return JobParams(batch_sizes=BATCH_SIZES, default_batch_size=default, num_pruning_rounds=rounds)


def run_pruning(
    p: JobParams, outcome: Callable[[int, int], tuple[bool, float]], limit: int = 50
) -> tuple[list[int], PruningStep]:
    """Drive the walk to the end, finishing each exploration at once."""
    history: dict[int, list[Exploration]] = {}
    order: list[int] = []
    for number in range(1, limit + 1):
        step = pruning_walk(p, history, min_cost_batch_size=p.default_batch_size)
        if step.batch_size is None:
            return order, step
        assert step.trial_type is TrialType.EXPLORATION
        round_index = len(history.get(step.batch_size, []))
        converged, cost = outcome(step.batch_size, round_index)
        history.setdefault(step.batch_size, []).append(
            Exploration(number, step.batch_size, False, converged, cost)
        )
        order.append(step.batch_size)
    raise AssertionError("pruning did not finish")


def test_a_round_goes_down_from_the_default_then_up() -> None:
    order, step = run_pruning(params(rounds=1), lambda bs, r: (True, float(bs)))
    assert order == [64, 32, 16, 128, 256]
    assert step.arms == BATCH_SIZES


def test_a_non_converged_batch_size_ends_its_direction() -> None:
    # 32 fails: 16 is never tried; 256 fails after 128.
    outcome = {16: True, 32: False, 64: True, 128: True, 256: False}
    order, step = run_pruning(params(rounds=1), lambda bs, r: (outcome[bs], 1.0))
    assert order == [64, 32, 128, 256]
    assert step.arms == (64, 128)


def test_the_next_round_starts_from_the_cheapest_converged_batch_size() -> None:
    costs = {16: 5.0, 32: 3.0, 64: 4.0, 128: 6.0, 256: 7.0}
    order, step = run_pruning(params(rounds=2), lambda bs, r: (True, costs[bs]))
    # Round 2 starts at 32 (cheapest): down 32, 16; up 64, 128, 256.
    assert order == [64, 32, 16, 128, 256, 32, 16, 64, 128, 256]
    assert step.state.default_batch_size == 32
    assert step.arms == BATCH_SIZES


def test_second_round_prunes_what_fails_again() -> None:
    def outcome(bs: int, r: int) -> tuple[bool, float]:
        if r == 1 and bs in (16, 256):
            return False, 9.0
        return True, {16: 5.0, 32: 3.0, 64: 4.0, 128: 6.0, 256: 7.0}[bs]

    order, step = run_pruning(params(rounds=2), outcome)
    assert order[5:] == [32, 16, 64, 128, 256]
    assert step.arms == (32, 64, 128)


def test_a_running_exploration_yields_a_concurrent_trial_of_the_cheapest_batch_size() -> None:
    history = {64: [Exploration(1, 64, True)]}
    step = pruning_walk(params(), history, min_cost_batch_size=128)
    assert (step.batch_size, step.trial_type) == (128, TrialType.CONCURRENT)


def failed(number: int, bs: int) -> Exploration:
    return Exploration(number, bs, False, False, 1.0)


def test_a_round_with_nothing_converged_is_walked_again() -> None:
    history = {64: [failed(1, 64)], 128: [failed(2, 128)]}
    step = pruning_walk(params(), history, min_cost_batch_size=64)
    assert (step.batch_size, step.trial_type) == (64, TrialType.EXPLORATION)
    assert (step.state.round, step.state.attempt) == (0, 1)
    assert step.dead_end is None
    # The second walk takes each batch size's next exploration, in the same order.
    history[64].append(failed(3, 64))
    step = pruning_walk(params(), history, min_cost_batch_size=64)
    assert (step.batch_size, step.state.attempt) == (128, 1)


def test_a_first_round_that_converges_nowhere_twice_serves_the_best_batch_size_so_far() -> None:
    history = {64: [failed(1, 64), failed(3, 64)], 128: [failed(2, 128), failed(4, 128)]}
    assert ROUND_ATTEMPTS == 2
    step = pruning_walk(params(), history, min_cost_batch_size=64)
    assert step.batch_size is None
    assert step.arms == (64,)
    assert step.dead_end is not None and step.dead_end.round == 0
    assert "pruning round 1" in step.dead_end.message and "64" in step.dead_end.message
    # A Concurrent trial converged meanwhile: that batch size is the best seen.
    assert pruning_walk(params(), history, min_cost_batch_size=32).arms == (32,)


def test_a_later_round_that_converges_nowhere_twice_keeps_the_round_s_candidates() -> None:
    def outcome(bs: int, index: int) -> tuple[bool, float]:
        return index == 0 and bs in (32, 64, 128), float(bs)

    order, step = run_pruning(params(rounds=2), outcome)
    # Round 1 keeps 32, 64, 128 (16 and 256 fail); round 2 starts at 32 and fails
    # everywhere, twice: 32 then 64 each walk (32 ends the way down, 64 the way up).
    assert order == [64, 32, 16, 128, 256, 32, 64, 32, 64]
    assert step.arms == (32, 64, 128)
    assert step.dead_end is not None and step.dead_end.round == 1


def test_a_second_walk_that_converges_goes_on_as_the_round_s_result() -> None:
    def outcome(bs: int, index: int) -> tuple[bool, float]:
        return index >= 1 or bs not in (64, 128), float(bs)  # 64 and 128 fail once

    order, step = run_pruning(params(rounds=2), outcome)
    # Round 1: 64 and 128 fail; walked again, everything converges.
    assert order[:2] == [64, 128]
    assert order[2:7] == [64, 32, 16, 128, 256]
    # Round 2 starts from the cheapest (16), each batch size on its next exploration.
    assert order[7:] == [16, 32, 64, 128, 256]
    assert step.dead_end is None and step.arms == BATCH_SIZES


def test_decide_serves_the_fallback_arm_and_says_why() -> None:
    history = {64: [failed(1, 64), failed(3, 64)], 128: [failed(2, 128), failed(4, 128)]}
    decision = decide(params(), in_bandit_stage=False, min_cost_batch_size=64,
                      explorations=history, arms=(), rng=np.random.default_rng(0))  # fmt: skip
    assert decision.batch_size == 64 and decision.trial_type is TrialType.MAB
    assert decision.new_arms is not None and [a.batch_size for a in decision.new_arms] == [64]
    assert decision.dead_end is not None and decision.dead_end.arms == (64,)


def test_zero_rounds_makes_every_batch_size_an_arm_at_once() -> None:
    step = pruning_walk(params(rounds=0), {}, min_cost_batch_size=64)
    assert step.batch_size is None
    assert step.arms == BATCH_SIZES


def test_the_smallest_default_only_goes_up_after_itself() -> None:
    order, _ = run_pruning(params(rounds=1, default=16), lambda bs, r: (True, 1.0))
    assert order == [16, 32, 64, 128, 256]

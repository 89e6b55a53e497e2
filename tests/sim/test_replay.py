from __future__ import annotations

import json
from dataclasses import replace

from app.sim.protocol import EngineError, TrialId
from app.sim.pure_engine import PureEngine
from app.sim.replay import baselines, fixed_batch_size_costs, metric_at, replay
from app.sim.results import Baseline, CaseResult, ReplaySettings, TryRecord
from app.sim.traces import build_case, find_workload
from tests.sim.synthetic import WORKLOAD, toy_case


def test_the_metric_crosses_the_target_exactly_at_the_reach_epoch() -> None:
    case = toy_case()
    assert [metric_at(case, e, 3) < 0.5 for e in (1, 2)] == [True, True]
    assert [metric_at(case, e, 3) for e in (3, 4, 10)] == [0.5, 0.5, 0.5]
    assert all(metric_at(case, e, None) < 0.5 for e in range(1, 11))
    lower = toy_case(workload=replace(WORKLOAD, target_metric=40.0, higher_is_better_metric=False))
    assert metric_at(lower, 2, 3) > 40.0
    assert metric_at(lower, 3, 3) == 40.0


async def test_a_toy_replay_walks_the_pruning_rounds_and_counts_every_try() -> None:
    case = toy_case()
    result = await replay(PureEngine(), case, ReplaySettings(recurrences=8, seed=3))
    assert result.error is None and result.played == 8
    # Round 1: 16 (the default), 8, 32; round 2 from the cheapest, 16: 16, 8, 32.
    assert result.batch_size_sequence[:3] == (16, 8, 32)
    for t in result.tries:
        assert t.cost == case.run_cost(t.batch_size, t.epochs, 0.5)
    by_recurrence = [sum(t.cost for t in result.tries if t.recurrence == r) for r in range(1, 9)]
    assert list(result.per_recurrence) == by_recurrence
    assert result.cumulative_cost == sum(t.cost for t in result.tries)


async def test_a_failed_try_is_retried_within_its_recurrence() -> None:
    case = toy_case({8: (None,), 16: (4,), 32: (3,)})
    result = await replay(PureEngine(), case, ReplaySettings(recurrences=2))
    second = [t for t in result.tries if t.recurrence == 2]
    assert [(t.batch_size, t.converged, t.attempt) for t in second] == [
        (8, False, 1),
        (32, True, 2),
    ]
    # Early stopped once the cost passed 2 x 4000: after epoch 9, not at max_epochs.
    assert second[0].epochs == 9


class _Refusing(PureEngine):
    """The pure engine, refusing every dispatch after the first two (a 409 of some job)."""

    def __init__(self) -> None:
        super().__init__()
        self.dispatched = 0

    async def next_trial(self, job_id: str) -> TrialId:
        self.dispatched += 1
        if self.dispatched > 2:
            raise EngineError(409, "refused")
        return await super().next_trial(job_id)


async def test_an_engine_error_ends_the_replay_with_a_reason() -> None:
    case = toy_case({8: (None,), 16: (None,), 32: (None,)})
    result = await replay(_Refusing(), case, ReplaySettings(recurrences=3))
    assert result.error is not None
    assert result.error.startswith("stopped in recurrence 1: 409: refused")
    # The default failed, so the walk skipped the smaller 8 and tried 32; both count.
    assert result.batch_size_sequence == (16, 32)
    assert result.per_recurrence == (20_000.0,)
    assert result.cumulative_cost == sum(t.cost for t in result.tries)


async def test_a_job_whose_pruning_converges_nowhere_keeps_getting_batch_sizes() -> None:
    case = toy_case({8: (None,), 16: (None,), 32: (None,)})
    result = await replay(PureEngine(), case, ReplaySettings(recurrences=3))
    assert result.error is None and result.played == 3
    # Round 1 walked twice (16, then 32 above it), then the default for good.
    assert result.batch_size_sequence[:4] == (16, 32, 16, 32)
    assert set(result.batch_size_sequence[4:]) == {16}


def test_baselines_replay_one_batch_size_on_the_same_seed() -> None:
    case = toy_case()
    settings = ReplaySettings(recurrences=4, seed=5)
    default, oracle = baselines(case, settings, 4)
    assert (default.batch_size, oracle.batch_size) == (16, 16)
    assert default.per_recurrence == (4000.0,) * 4
    # 32 fails half of its runs (10 epochs each) before a 3-epoch success.
    costs = fixed_batch_size_costs(case, 32, eta_knob=0.5, seed=5, recurrences=50)
    assert {c % 10_000 for c in costs} == {3000.0}


def _result(batch_sizes: list[int], oracle: int) -> CaseResult:
    tries = tuple(
        TryRecord(r, 1, r, bs, 1, 1.0, 1.0, 10.0, True) for r, bs in enumerate(batch_sizes, 1)
    )
    n = len(batch_sizes)
    return CaseResult(
        case=toy_case(), settings=ReplaySettings(), recurrences=n, tries=tries,
        per_recurrence=(10.0,) * n, default=Baseline(16, 20.0, (20.0,) * n),
        oracle=Baseline(oracle, 8.0, (8.0,) * n),
    )  # fmt: skip


def test_settled_at_is_where_the_last_run_of_oracle_choices_starts() -> None:
    assert _result([16, 8, 8, 16, 8, 8], oracle=8).settled_at == 5
    assert _result([8, 8, 8], oracle=8).settled_at == 1
    assert _result([8, 8, 16], oracle=8).settled_at is None
    result = _result([16, 8], oracle=8)
    assert result.savings_vs_default_pct == 50.0
    assert result.cost_over_oracle == 1.25


async def test_a_trace_replay_is_reproducible_and_json_ready() -> None:
    case = build_case(find_workload("squad"), "p100")
    settings = ReplaySettings(recurrences=20)
    first = await replay(PureEngine(), case, settings)
    second = await replay(PureEngine(), case, settings)
    assert first.batch_size_sequence == second.batch_size_sequence
    assert first.batch_size_sequence[:10] == (24, 16, 12, 8, 4, 4, 8, 12, 16, 24)
    data = json.loads(json.dumps(first.to_dict(), allow_nan=False))
    assert data["oracle"]["batch_size"] == 4
    assert data["recurrences_played"] == 20
    assert len(data["tries"]) == len(data["batch_size_sequence"])

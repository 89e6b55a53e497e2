from __future__ import annotations

from dataclasses import replace

import pytest

from app.schemas import JobSpec
from app.sim.protocol import EngineError, TrialId
from app.sim.pure_engine import PureEngine
from tests.sim.synthetic import respec

SPEC = JobSpec(
    job_id_prefix="toy",
    batch_sizes=[8, 16, 32],
    default_batch_size=16,
    max_power=100.0,
    gpu_model="toy",
    number_of_gpus=1,
    target_metric=0.5,
    max_epochs=10,
    mab_seed=1,
)


async def finish(
    engine: PureEngine, trial: TrialId, *, cost: float, converged: bool = True
) -> bool:
    """End ``trial`` with one report whose cost is ``cost`` (energy 0: cost = 50 W x time)."""
    answer = await engine.report(
        trial, time=cost / 50.0, energy=0.0, metric=0.5 if converged else 0.1,
        current_epoch=1 if converged else 10,
    )  # fmt: skip
    assert answer.stop_train
    await engine.end_trial(trial)
    return answer.converged


async def test_the_pruning_walk_goes_down_from_the_default_then_up() -> None:
    engine = PureEngine()
    job_id = await engine.register(SPEC)
    seen = []
    for cost in (300.0, 200.0, 350.0, 250.0, 150.0, 280.0):  # within 2 x min cost
        trial = await engine.next_trial(job_id)
        seen.append(trial.batch_size)
        assert await finish(engine, trial, cost=cost)
    # Round 2 starts from round 1's cheapest (8), so its down list is just [8].
    assert seen == [16, 8, 32, 8, 16, 32]
    trial = await engine.next_trial(job_id)  # this request switches to the bandit
    assert [arm.batch_size for arm in engine.arms(job_id)] == [8, 16, 32]
    assert trial.trial_number == 7


async def test_registering_again_returns_the_job_and_a_different_spec_is_a_conflict() -> None:
    engine = PureEngine()
    spec = respec(SPEC, job_id="toy-1")
    assert await engine.register(spec) == "toy-1"
    assert await engine.register(spec) == "toy-1"
    with pytest.raises(EngineError) as caught:
        await engine.register(respec(spec, eta_knob=0.9))
    assert caught.value.status_code == 409


async def test_unknown_jobs_and_trials_and_wrong_batch_sizes_are_refused() -> None:
    engine = PureEngine()
    job_id = await engine.register(SPEC)
    with pytest.raises(EngineError, match="404"):
        await engine.next_trial("nope")
    with pytest.raises(EngineError, match="404"):
        await engine.end_trial(TrialId(job_id, 16, 1))
    trial = await engine.next_trial(job_id)
    with pytest.raises(EngineError, match="400"):
        await engine.report(
            replace(trial, batch_size=8), time=1, energy=1, metric=0, current_epoch=1
        )


async def test_only_a_cheaper_converged_trial_lowers_min_cost() -> None:
    engine = PureEngine()
    job_id = await engine.register(respec(SPEC, beta_knob=None))
    assert not await finish(engine, await engine.next_trial(job_id), cost=10.0, converged=False)
    assert engine.min_cost(job_id) is None
    assert await finish(engine, await engine.next_trial(job_id), cost=500.0)
    assert engine.min_cost(job_id) == 500.0
    assert await finish(engine, await engine.next_trial(job_id), cost=800.0)
    assert engine.min_cost(job_id) == 500.0


async def test_an_ended_trial_keeps_its_answer_and_a_failed_one_is_explored_again() -> None:
    engine = PureEngine()
    job_id = await engine.register(SPEC)
    first = await engine.next_trial(job_id)
    assert await finish(engine, first, cost=300.0)
    again = await engine.report(first, time=99, energy=99, metric=0, current_epoch=2)
    assert (again.stop_train, again.converged) == (True, True)
    second = await engine.next_trial(job_id)
    await engine.end_trial(second)  # ended without a report: Failed
    answer = await engine.report(second, time=1, energy=1, metric=0.5, current_epoch=1)
    assert (answer.stop_train, answer.converged) == (True, False)
    third = await engine.next_trial(job_id)
    assert third.batch_size == second.batch_size
    assert third.trial_number == 3


async def test_a_round_with_nothing_converged_is_walked_again_then_falls_back() -> None:
    engine = PureEngine()
    job_id = await engine.register(respec(SPEC, batch_sizes=[16, 32]))
    for _ in range(4):  # two walks of round 1, each trying both
        assert not await finish(engine, await engine.next_trial(job_id), cost=1.0, converged=False)
    fallback = await engine.next_trial(job_id)
    assert fallback.batch_size == SPEC.default_batch_size
    dead_end = engine.dead_end(job_id)
    assert dead_end is not None and dead_end.round == 0
    assert [a.batch_size for a in engine.arms(job_id)] == [SPEC.default_batch_size]


async def test_bandit_arms_refit_on_their_last_window_of_results() -> None:
    engine = PureEngine()
    job_id = await engine.register(respec(SPEC, batch_sizes=[16], window_size=2, beta_knob=None))
    for cost in (100.0, 300.0):
        assert await finish(engine, await engine.next_trial(job_id), cost=cost)
    trial = await engine.next_trial(job_id)
    assert engine.arms(job_id)[0].param_mean == pytest.approx(-200.0)
    assert await finish(engine, trial, cost=500.0)
    arm = engine.arms(job_id)[0]
    assert arm.num_observations == 2
    assert arm.param_mean == pytest.approx(-400.0)  # 300 and 500: the first result left the window

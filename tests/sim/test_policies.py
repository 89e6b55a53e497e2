"""The simulator's --policy and --metric-curve, and that zeus's results did not move."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from app.bandit import Policy
from app.schemas import JobSpec
from app.sim.engines import wire_body
from app.sim.protocol import EngineError
from app.sim.pure_engine import PureEngine
from app.sim.replay import metric_at, replay
from app.sim.results import MetricCurve, ReplaySettings
from app.sim.traces import all_cases, build_case, find_workload
from bench import policies
from tests.sim.synthetic import WORKLOAD, respec, toy_case

SPEC = JobSpec(
    job_id_prefix="toy", batch_sizes=[8, 16, 32], default_batch_size=16, max_power=100.0,
    gpu_model="toy", number_of_gpus=1, target_metric=0.5, max_epochs=10, mab_seed=1,
)  # fmt: skip

# The tries of every case at two settings, digested with the code before the predictive
# policy existed (commit 1b1cd18): the zeus policy and the linear curve must reproduce them.
ZEUS_DIGEST = "a68f44b000adc52bff46727bc78e4a4a1eda1f103a6aa3d3daab4cf330b209f7"


def test_the_concave_metric_reaches_the_target_exactly_at_the_reach_epoch() -> None:
    case = toy_case()
    concave = [metric_at(case, e, 8, MetricCurve.CONCAVE) for e in range(1, 11)]
    assert all(m < 0.5 for m in concave[:7])
    assert concave[7:] == [0.5, 0.5, 0.5]
    gains = [b - a for a, b in zip([metric_at(case, 0, 8, MetricCurve.CONCAVE), *concave], concave,
                                   strict=False)][:8]  # fmt: skip
    assert all(g > 0 for g in gains)
    assert gains == sorted(gains, reverse=True)  # fast first, then flat
    linear = [metric_at(case, e, 8) for e in range(1, 8)]
    assert all(c > lin for c, lin in zip(concave, linear, strict=False))  # closer to the target
    assert all(metric_at(case, e, None, MetricCurve.CONCAVE) < 0.5 for e in range(1, 11))
    lower = toy_case(workload=replace(WORKLOAD, target_metric=40.0, higher_is_better_metric=False))
    assert metric_at(lower, 2, 3, MetricCurve.CONCAVE) > 40.0
    assert metric_at(lower, 3, 3, MetricCurve.CONCAVE) == 40.0


def test_replays_default_to_zeus_on_the_linear_curve() -> None:
    settings = ReplaySettings()
    assert (settings.policy, settings.metric_curve) == (Policy.ZEUS, MetricCurve.LINEAR)


async def test_zeus_replays_are_those_of_before_the_predictive_policy() -> None:
    digest = hashlib.sha256()
    for settings in (ReplaySettings(seed=1), ReplaySettings(seed=2, eta_knob=0.2, window_size=3)):
        for case in all_cases():
            result = await replay(PureEngine(), case, settings)
            tries = [(t.batch_size, t.epochs, round(t.cost, 3), t.converged) for t in result.tries]
            digest.update(repr(tries).encode())
    assert digest.hexdigest() == ZEUS_DIGEST


@pytest.mark.parametrize("policy", list(Policy))
async def test_no_policy_reads_the_shape_of_the_metric_curve(policy: Policy) -> None:
    case = build_case(find_workload("cifar100"), "p100")
    linear = await replay(PureEngine(), case, ReplaySettings(policy=policy))
    concave = await replay(
        PureEngine(), case, ReplaySettings(policy=policy, metric_curve=MetricCurve.CONCAVE)
    )
    assert linear.tries == concave.tries


async def test_the_predictive_policy_stops_a_doomed_exploration_sooner() -> None:
    # Every epoch costs 1000. 16 converges in 4 epochs (min_cost 4000); 8 never does, and
    # zeus trains it until its cost passes 2 x 4000: after epoch 9.
    case = toy_case({8: (None,), 16: (4,), 32: (3,)})
    zeus = await replay(PureEngine(), case, ReplaySettings(recurrences=2))
    predictive = await replay(
        PureEngine(), case, ReplaySettings(recurrences=2, policy=Policy.PREDICTIVE)
    )
    assert [(t.batch_size, t.epochs, t.converged) for t in zeus.tries] == [
        (16, 4, True), (8, 9, False), (32, 3, True),
    ]  # fmt: skip
    # Predictive: the predictive stop never fires (past the 4 x 8 / 16 = 2 epochs 8 needs at
    # least, it may reach the target at its next epoch); the round stop (cost + epochs still
    # needed > 6000) stops it after epoch 7.
    assert [(t.batch_size, t.epochs, t.converged) for t in predictive.tries] == [
        (16, 4, True), (8, 7, False), (32, 3, True),
    ]  # fmt: skip
    assert predictive.cumulative_cost == zeus.cumulative_cost - 2000.0


async def test_a_predictive_stop_counts_its_predicted_cost_in_the_arms() -> None:
    engine = PureEngine()
    job_id = await engine.register(respec(SPEC, batch_sizes=[16], policy=Policy.PREDICTIVE,
                                           num_pruning_rounds=0))  # fmt: skip
    first = await engine.next_trial(job_id)  # bandit stage at once: one arm, no rounds
    answer = await engine.report(first, time=50.0, energy=0.0, metric=0.5, current_epoch=5)
    assert answer.converged  # cost 2500 (50 W x 50 s): min_cost, and 16 needs >= 5 epochs
    second = await engine.next_trial(job_id)
    await engine.report(second, time=10.0, energy=0.0, metric=0.1, current_epoch=1)
    answer = await engine.report(second, time=20.0, energy=0.0, metric=0.1, current_epoch=2)
    # 1000 + 2 more epochs of 500 before its earliest target (epoch 5) = 2000 <= 5000: goes on.
    assert not answer.stop_train
    answer = await engine.report(second, time=70.0, energy=0.0, metric=0.1, current_epoch=3)
    # 3500 + 1 more epoch of 2500 = 6000 > 2 x 2500 before epoch 5: stopped, and counted with
    # its predicted cost to epoch 5, 3500 + 2 x 2500 = 8500, not 3500.
    assert (answer.stop_train, answer.converged) == (True, False)
    (arm,) = engine.arms(job_id)
    assert arm.num_observations == 2
    assert arm.param_mean == pytest.approx(-(2500.0 + 8500.0) / 2)


async def test_the_policy_is_part_of_the_spec_and_none_is_the_engines_default() -> None:
    engine = PureEngine()
    job_id = await engine.register(respec(SPEC, job_id="toy-1"))
    assert await engine.register(respec(SPEC, job_id="toy-1", policy=Policy.ZEUS)) == job_id
    with pytest.raises(EngineError) as caught:
        await engine.register(respec(SPEC, job_id="toy-1", policy=Policy.PREDICTIVE))
    assert caught.value.status_code == 409
    predictive_by_default = PureEngine(default_policy=Policy.PREDICTIVE)
    await predictive_by_default.register(respec(SPEC, job_id="toy-2"))
    with pytest.raises(EngineError, match="409"):
        await predictive_by_default.register(respec(SPEC, job_id="toy-2", policy=Policy.ZEUS))


def test_a_zeus_clients_body_has_no_policy() -> None:
    assert "policy" not in wire_body(SPEC)
    assert SPEC.algorithm_params().policy is Policy.ZEUS
    assert SPEC.algorithm_params(Policy.PREDICTIVE).policy is Policy.PREDICTIVE
    spec = respec(SPEC, policy=Policy.PREDICTIVE)
    assert wire_body(spec)["policy"] == "predictive"
    assert spec.algorithm_params().policy is Policy.PREDICTIVE


def test_the_bench_compares_both_policies(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--seeds",
        "1",
        "--etas",
        "0.5",
        "--cases",
        "squad@p100,sentiment140@a40",
        "--jobs",
        "1",
    ]
    with ThreadPoolExecutor(1) as pool:  # its asyncio.run must not touch the tests' loop
        assert pool.submit(policies.main, argv).result() == 0
    out = capsys.readouterr().out
    assert "8 replays (2 cases x 1 seeds from 1 x 2 configs x 2 policies; power limit max)" in out
    assert "| linear | 0.5 |" in out and "| concave | 0.5 |" in out
    assert "Every run is identical on both metric curves." in out
    assert "| sentiment140@a40 |" in out

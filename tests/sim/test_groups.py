"""Group replays: the service and the pure engine agree, and sharing acts (needs the service)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from typer.testing import CliRunner

from app.bandit import Policy
from app.cli.main import cli
from app.sim.engines import in_process_service
from app.sim.groups import GroupPlan, Perturbation, Sharing, parse_before, replay_group, schedule
from app.sim.pure_engine import PureEngine
from app.sim.results import ReplaySettings
from app.sim.traces import GPUS, find_workload


@pytest.mark.parametrize(
    ("dataset", "settings", "plan"),
    [
        ("imagenet", ReplaySettings(seed=2), GroupPlan(GPUS, recurrences=14)),
        (
            "cifar100",
            ReplaySettings(seed=3, eta_knob=0.2, policy=Policy.PREDICTIVE),
            GroupPlan(("p100", "v100"), before=(("a40", 6),), recurrences=8),
        ),
    ],
)
async def test_the_service_and_the_pure_engine_agree_on_a_group(
    dataset: str, settings: ReplaySettings, plan: GroupPlan
) -> None:
    workload = find_workload(dataset)
    async with in_process_service() as engine:
        served = await replay_group(engine, workload, settings, plan)
    pure = await replay_group(PureEngine(), workload, settings, plan)
    assert served.error is None and pure.error is None
    assert served.recurrences == pure.recurrences  # GPUs, batch sizes, costs, convergence
    assert len(pure.recurrences) == plan.recurrences


async def test_sharing_changes_what_a_joining_gpu_does() -> None:
    workload, settings = find_workload("movielens-1m"), ReplaySettings(seed=1)
    warm = GroupPlan(("v100",), before=(("p100", 20),), recurrences=10)
    shared = await replay_group(PureEngine(), workload, settings, warm)
    alone = await replay_group(
        PureEngine(), workload, settings, GroupPlan(("v100",), Sharing.SEPARATE, warm.before, 10)
    )
    # Rule 3: v100's walk starts at p100's best batch size, not at the default.
    assert shared.recurrences[0].batch_sizes[0] == shared.oracle_batch_sizes["p100"]
    assert alone.recurrences[0].batch_sizes[0] == 1024  # movielens-1m's default
    assert shared.mean_over_oracle is not None and alone.mean_over_oracle is not None
    assert shared.mean_over_oracle < 0.7 * alone.mean_over_oracle


def test_the_schedule_is_seeded_and_puts_the_warm_start_first() -> None:
    plan = GroupPlan(GPUS, before=(("a40", 2),), recurrences=30)
    first = schedule(plan, 5)
    assert first == schedule(plan, 5) and first != schedule(plan, 6)
    assert first[:2] == [("a40", False), ("a40", False)]
    assert all(counted for _, counted in first[2:]) and len(first) == 32
    assert {gpu for gpu, _ in first[2:]} == set(GPUS)


def test_perturbed_epochs_differ_per_gpu_but_keep_never_as_never() -> None:
    workload, settings = find_workload("squad"), ReplaySettings(seed=4)
    from app.sim.groups import group_cases

    plain = group_cases(workload, GroupPlan(GPUS), seed=settings.seed)
    scaled = group_cases(workload, GroupPlan(GPUS, perturb=Perturbation.SCALE), seed=4)
    shifted = group_cases(workload, GroupPlan(GPUS, perturb=Perturbation.SHIFT), seed=4)
    assert plain["a40"].paths == plain["v100"].paths  # the traces: GPU-independent
    assert scaled["a40"].paths != plain["a40"].paths
    for gpu in GPUS:
        for bs, runs in shifted[gpu].paths.items():
            for new, old in zip(runs, plain[gpu].paths[bs], strict=True):
                assert (new is None) == (old is None)
                assert new is None or old is None or abs(new - old) <= 1 or new == 1


def test_before_options_are_parsed_with_clear_errors() -> None:
    assert parse_before(["A40:3", "v100:1"], GPUS) == (("a40", 3), ("v100", 1))
    for bad in ("a40", "h100:3", "a40:0", "a40:x"):
        with pytest.raises(ValueError, match="GPU:N"):
            parse_before([bad], GPUS)


def test_simulate_lists_every_counted_recurrence_in_json() -> None:
    with ThreadPoolExecutor(1) as pool:  # its asyncio.run must not touch the tests' loop
        result = pool.submit(
            CliRunner().invoke,
            cli,
            ["simulate", "--engine", "pure", "-w", "squad", "--gpu", "a40,p100", "--before",
             "v100:3", "-n", "6", "--json"],
        ).result()  # fmt: skip
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    (case,) = body["cases"]
    assert case["plan"]["sharing"] == "group" and case["plan"]["before"] == ["v100:3"]
    recurrences = case["recurrences"]
    assert [r["index"] for r in recurrences] == list(range(1, 7))
    assert {r["gpu"] for r in recurrences} <= {"a40", "p100"}
    for r in recurrences:
        assert r["batch_sizes"] and r["cost"] > 0 and r["oracle_cost"] > 0
    mean = sum(r["cost"] / r["oracle_cost"] for r in recurrences) / len(recurrences)
    assert case["mean_cost_over_oracle"] == pytest.approx(mean)

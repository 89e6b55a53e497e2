"""Both engines choose the same batch sizes for the same seed (needs the service)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.bandit import Policy
from app.config import Settings
from app.http.app import create_app
from app.sim.engines import HttpEngine, in_process_service, sqlite_url
from app.sim.pure_engine import PureEngine
from app.sim.replay import replay
from app.sim.results import ReplaySettings
from app.sim.traces import build_case, find_workload
from app.store.migrate import upgrade_head


@pytest.mark.parametrize(
    ("dataset", "gpu", "settings"),
    [
        ("squad", "p100", ReplaySettings(recurrences=20, seed=1)),
        ("sentiment140", "rtx6000", ReplaySettings(recurrences=16, seed=4, window_size=3)),
    ],
)
async def test_the_service_and_the_pure_engine_choose_the_same_batch_sizes(
    tmp_path: Path, dataset: str, gpu: str, settings: ReplaySettings
) -> None:
    case = build_case(find_workload(dataset), gpu)
    url = sqlite_url(tmp_path)
    upgrade_head(url)
    app = create_app(Settings(database_url=url, log_level="WARNING"))
    async with app.router.lifespan_context(app), HttpEngine.for_app(app) as engine:
        served = await replay(engine, case, settings)
    pure = await replay(PureEngine(), case, settings)
    assert served.error is None and pure.error is None
    assert served.batch_size_sequence == pure.batch_size_sequence
    assert served.tries == pure.tries  # same epochs, costs and convergence too
    assert any(t.trial_number > 10 for t in served.tries)  # reached the bandit stage


@pytest.mark.parametrize(
    ("dataset", "gpu", "settings"),
    [
        ("cifar100", "a40", ReplaySettings(recurrences=12, seed=1, policy=Policy.PREDICTIVE)),
        (
            "movielens-1m",
            "p100",
            ReplaySettings(recurrences=12, seed=3, window_size=3, policy=Policy.PREDICTIVE),
        ),
    ],
)
async def test_they_agree_under_the_predictive_policy_too(
    dataset: str, gpu: str, settings: ReplaySettings
) -> None:
    case = build_case(find_workload(dataset), gpu)
    async with in_process_service() as engine:
        served = await replay(engine, case, settings)
    pure = await replay(PureEngine(), case, settings)
    assert served.error is None and pure.error is None
    assert served.tries == pure.tries  # same batch sizes, epochs, costs and convergence
    zeus = await replay(PureEngine(), case, ReplaySettings(
        recurrences=settings.recurrences, seed=settings.seed, window_size=settings.window_size,
    ))  # fmt: skip
    assert zeus.tries != pure.tries  # the predictive rules did act


async def test_the_in_process_service_of_the_command_agrees_too() -> None:
    case = build_case(find_workload("sentiment140"), "p100")
    settings = ReplaySettings(recurrences=12, seed=2, eta_knob=0.3)
    async with in_process_service() as engine:
        served = await replay(engine, case, settings)
    pure = await replay(PureEngine(), case, settings)
    assert served.batch_size_sequence == pure.batch_size_sequence

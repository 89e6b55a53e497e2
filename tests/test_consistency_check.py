"""The consistency check of tests/support/consistency.py finds what it must find.

It runs on rows a real run stored (one job through pruning into the bandit
stage), then on copies with one thing broken each: a check that passed
everything would make the crash and concurrency tests prove nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.store.tables import arm, batch_size, job, trial
from tests.helpers import dispatch, finish, register
from tests.support.consistency import Acknowledged, check_consistency, consistency_problems

Rows = dict[str, list[dict[str, Any]]]


@pytest.fixture
async def stored(client: httpx.AsyncClient, app: Any) -> tuple[Rows, Acknowledged]:
    """A job whose explorations converged and whose first bandit trial ended; its rows."""
    job_id = await register(client, num_pruning_rounds=1, batch_sizes=[32, 64, 128], window_size=2)
    acknowledged = Acknowledged(jobs={job_id})
    for index in range(6):
        trial_ = await dispatch(client, job_id)
        key = (job_id, trial_["trial_number"])
        acknowledged.dispatched[key] = trial_["batch_size"]
        seconds = 5.0 + trial_["batch_size"] / 8 + index
        verdict = await finish(client, trial_, cost_time=seconds)
        acknowledged.results[key] = (seconds, seconds * 100, verdict["converged"])
    last = await dispatch(client, job_id)
    assert (await client.patch("/trials", json=last)).status_code == 200
    acknowledged.ended.add((job_id, last["trial_number"]))
    await check_consistency(app.state.engine, acknowledged)
    rows: Rows = {}
    async with app.state.engine.connect() as conn:
        for table in (job, batch_size, trial, arm):
            rows[table.name] = [r._asdict() for r in await conn.execute(select(table))]
    assert rows["arm"], "the job never reached the bandit stage"
    return rows, acknowledged


def _problems(rows: Rows, acknowledged: Acknowledged) -> list[str]:
    return consistency_problems(
        rows["job"], rows["batch_size"], rows["trial"], rows["arm"], acknowledged
    )


def _succeeded(rows: Rows) -> list[dict[str, Any]]:
    return [t for t in rows["trial"] if t["status"] == "Succeeded"]


def _lose_a_trial(rows: Rows) -> None:
    rows["trial"].remove(rows["trial"][2])


def _count_a_result_twice(rows: Rows) -> None:
    size = next(s for s in rows["batch_size"] if s["reward_count"])
    size["reward_count"] += 1


def _forget_a_reward(rows: Rows) -> None:
    size = next(s for s in rows["batch_size"] if s["reward_count"])
    size["reward_mean"] *= 1.5


def _raise_min_cost(rows: Rows) -> None:
    rows["job"][0]["min_cost"] *= 1.01


def _refit_an_arm_wrong(rows: Rows) -> None:
    rows["arm"][0]["num_observations"] += 1


def _half_register(rows: Rows) -> None:
    rows["batch_size"].clear()
    rows["trial"].clear()
    rows["arm"].clear()


BREAKAGES: dict[str, Callable[[Rows], None]] = {
    "a trial number is missing": _lose_a_trial,
    "a result counted twice": _count_a_result_twice,
    "statistics that are not the trials'": _forget_a_reward,
    "min_cost that is not the cheapest converged trial's": _raise_min_cost,
    "an arm that is no fit of its trials": _refit_an_arm_wrong,
    "a job without its batch sizes": _half_register,
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
async def test_each_kind_of_inconsistency_is_found(
    stored: tuple[Rows, Acknowledged], breakage: str
) -> None:
    rows, acknowledged = stored
    assert _problems(rows, acknowledged) == []
    broken = copy.deepcopy(rows)
    BREAKAGES[breakage](broken)
    assert _problems(broken, Acknowledged()), f"{breakage} went unnoticed"


async def test_acknowledged_answers_must_be_stored(stored: tuple[Rows, Acknowledged]) -> None:
    rows, acknowledged = stored
    job_id = rows["job"][0]["job_id"]
    lost_result = copy.deepcopy(rows)
    key = next((t["job_id"], t["trial_number"]) for t in _succeeded(lost_result))
    for t in lost_result["trial"]:
        if (t["job_id"], t["trial_number"]) == key:
            t.update(status="Dispatched", time=None, energy=None, cost=None, converged=None)
    assert _problems(lost_result, Acknowledged(results={key: acknowledged.results[key]}))
    unknown = Acknowledged(jobs={"never-stored"}, dispatched={(job_id, 999): 64},
                           ended={(job_id, 1)})  # fmt: skip
    assert len(_problems(rows, unknown)) == 3

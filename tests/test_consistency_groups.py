"""The consistency check recomputes a job group's tables, and finds them broken.

Two jobs of one group (different GPUs) run trials that converge at different
epochs, run out of epochs, or end early; the check passes on what they
stored, then fails on copies with one thing of the group's broken each: a
check blind to groups would let the crash tests pass a group counted twice.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.store.tables import arm, batch_size, group_batch_size, job, job_group, trial
from tests.helpers import dispatch, register, report
from tests.support.consistency import Acknowledged, check_consistency, consistency_problems

Rows = dict[str, list[dict[str, Any]]]
GROUPED: dict[str, Any] = {
    "group": "consistency", "batch_sizes": [16, 32, 64], "default_batch_size": 32,
    "max_epochs": 4, "num_pruning_rounds": 1, "beta_knob": None,
}  # fmt: skip


@pytest.fixture
async def stored(client: httpx.AsyncClient, app: Any) -> Rows:
    jobs = [
        await register(client, job_id=f"cg-{gpu}", job_id_prefix="cg", gpu_model=gpu, **GROUPED)
        for gpu in ("A40", "V100")
    ]
    outcomes = [(0.95, 2), (0.1, 4), (0.95, 3), (0.95, 1), (0.1, 4), (0.95, 2)]
    for index, (metric, epochs) in enumerate(outcomes):
        trial_ = await dispatch(client, jobs[index % 2])
        for epoch in range(1, epochs + 1):
            answer = await report(
                client, trial_, time=10.0 * epoch, energy=1000.0 * epoch,
                metric=metric if epoch == epochs else 0.1, epoch=epoch,
            )  # fmt: skip
            assert answer.status_code == 200, answer.text
        assert answer.json()["stop_train"], answer.json()
    ended = await dispatch(client, jobs[0])
    assert (await client.patch("/trials", json=ended)).status_code == 200
    await check_consistency(app.state.engine, Acknowledged(jobs=set(jobs)))
    rows: Rows = {}
    async with app.state.engine.connect() as conn:
        for table in (job, batch_size, trial, arm, job_group, group_batch_size):
            rows[table.name] = [r._asdict() for r in await conn.execute(select(table))]
    counted = [r for r in rows["group_batch_size"] if r["runs"]]
    assert sum(r["runs"] for r in counted) == len(outcomes)
    assert any(r["converged"] for r in counted) and any(r["exhausted"] for r in counted)
    return rows


def _problems(rows: Rows) -> list[str]:
    return consistency_problems(
        rows["job"], rows["batch_size"], rows["trial"], rows["arm"], Acknowledged(),
        groups=rows["job_group"], group_sizes=rows["group_batch_size"],
    )  # fmt: skip


def _counted(rows: Rows, what: str = "runs") -> dict[str, Any]:
    return next(r for r in rows["group_batch_size"] if r[what])


def _run_counted_twice(rows: Rows) -> None:
    _counted(rows)["runs"] += 1


def _converged_run_counted_twice(rows: Rows) -> None:
    row = _counted(rows, "converged")
    row["runs"] += 1
    row["converged"] += 1
    row["total_epochs"] += row["min_epochs"]


def _lost_update(rows: Rows) -> None:
    row = _counted(rows, "converged")
    row["runs"] -= 1
    row["converged"] -= 1


def _exhausted_beyond_runs(rows: Rows) -> None:
    row = _counted(rows)
    row["exhausted"] = row["runs"] - row["converged"] + 1


def _epochs_without_convergence(rows: Rows) -> None:
    row = {**_counted(rows), "batch_size": 4096, "runs": 0, "exhausted": 0, "converged": 0}
    rows["group_batch_size"].append({**row, "min_epochs": 2, "total_epochs": 2})


def _convergence_without_epochs(rows: Rows) -> None:
    _counted(rows, "converged")["min_epochs"] = None


def _epochs_beyond_max(rows: Rows) -> None:
    row = _counted(rows, "converged")
    row["total_epochs"] = row["converged"] * 4 + 1


def _missing_row(rows: Rows) -> None:
    rows["group_batch_size"].remove(_counted(rows))


def _member_disagrees(rows: Rows) -> None:
    rows["job"][0]["max_epochs"] = 5


def _group_row_missing(rows: Rows) -> None:
    rows["job_group"].clear()


BREAKAGES: dict[str, Callable[[Rows], None]] = {
    "a final report counted twice in its group": _run_counted_twice,
    "a converged run counted twice": _converged_run_counted_twice,
    "a member's result lost (an update overwritten)": _lost_update,
    "more exhausted runs than runs that did not converge": _exhausted_beyond_runs,
    "min_epochs without a converged run": _epochs_without_convergence,
    "a converged run without min_epochs": _convergence_without_epochs,
    "total_epochs beyond max_epochs per converged run": _epochs_beyond_max,
    "a member's batch size without a group row": _missing_row,
    "a member that disagrees with its group": _member_disagrees,
    "a group without its job_group row": _group_row_missing,
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
async def test_each_kind_of_group_inconsistency_is_found(stored: Rows, breakage: str) -> None:
    assert _problems(stored) == []
    broken = copy.deepcopy(stored)
    BREAKAGES[breakage](broken)
    assert _problems(broken), f"{breakage} went unnoticed"

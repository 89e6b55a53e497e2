"""The schema itself refuses the invalid states of SPEC section 3, on both databases."""

from __future__ import annotations

from datetime import datetime

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from app.store.tables import trial
from tests.helpers import dispatch, register

REFUSED = IntegrityError
# (batch_size, type, status, ended, time, energy, cost, converged)
INVALID = {
    "succeeded without a result": (64, "MAB", "Succeeded", True, None, None, None, None),
    "dispatched with a result": (64, "MAB", "Dispatched", False, 1.0, 1.0, 1.0, True),
    "failed without an end": (64, "MAB", "Failed", False, None, None, None, None),
    "an unknown status": (64, "MAB", "Paused", False, None, None, None, None),
    "an unknown type": (64, "Guess", "Dispatched", False, None, None, None, None),
    "a batch size the job lacks": (48, "MAB", "Dispatched", False, None, None, None, None),
    "negative energy": (64, "MAB", "Succeeded", True, 1.0, -1.0, 1.0, True),
}


async def _job_with_one_trial(client: httpx.AsyncClient) -> tuple[str, datetime]:
    job_id = await register(client)
    await dispatch(client, job_id)
    trial = (await client.get(f"/jobs/{job_id}/trials")).json()["items"][0]
    return job_id, datetime.fromisoformat(trial["start_timestamp"].replace("Z", "+00:00"))


COLUMNS = ("job_id", "trial_number", "batch_size", "type", "status", "start_timestamp",
           "end_timestamp", "time", "energy", "cost", "converged")  # fmt: skip


async def _insert(app: FastAPI, *values: object, failure_reason: str | None = None) -> None:
    row = dict(zip(COLUMNS, values, strict=True))
    row |= {"lease_renewed_at": row["start_timestamp"], "failure_reason": failure_reason}
    async with app.state.engine.begin() as conn:
        await conn.execute(insert(trial).values(row))


@pytest.mark.parametrize("case", list(INVALID))
async def test_invalid_trials_cannot_be_stored(
    app: FastAPI, client: httpx.AsyncClient, case: str
) -> None:
    job_id, started = await _job_with_one_trial(client)
    batch_size, kind, status, ended, time, energy, cost, converged = INVALID[case]
    end = started if ended else None
    with pytest.raises(REFUSED):
        await _insert(
            app, job_id, 99, batch_size, kind, status, started, end, time, energy, cost, converged
        )


@pytest.mark.parametrize(
    ("status", "reason"),
    [("Succeeded", "Ended"), ("Dispatched", "LeaseExpired"), ("Failed", "Crashed")],
)
async def test_a_failure_reason_is_one_of_the_known_and_only_on_failed_trials(
    app: FastAPI, client: httpx.AsyncClient, status: str, reason: str
) -> None:
    job_id, started = await _job_with_one_trial(client)
    succeeded = status == "Succeeded"
    result = (1.0, 1.0, 1.0, True) if succeeded else (None, None, None, None)
    end = None if status == "Dispatched" else started
    with pytest.raises(REFUSED):
        await _insert(app, job_id, 99, 64, "MAB", status, started, end, *result,
                      failure_reason=reason)  # fmt: skip
    await _insert(app, job_id, 98, 64, "MAB", "Failed", started, started, None, None, None, None,
                  failure_reason="LeaseExpired")  # fmt: skip


async def test_trial_numbers_are_unique_per_job(app: FastAPI, client: httpx.AsyncClient) -> None:
    job_id, started = await _job_with_one_trial(client)
    with pytest.raises(REFUSED):
        await _insert(
            app, job_id, 1, 64, "MAB", "Dispatched", started, None, None, None, None, None
        )
    trials = (await client.get(f"/jobs/{job_id}/trials")).json()["items"]
    assert len(trials) == 1


async def test_a_valid_trial_row_is_stored(app: FastAPI, client: httpx.AsyncClient) -> None:
    # The control for the cases above: the same statement with valid values.
    job_id, started = await _job_with_one_trial(client)
    await _insert(app, job_id, 2, 32, "MAB", "Succeeded", started, started, 1.0, 2.0, 3.0, True)
    trials = (await client.get(f"/jobs/{job_id}/trials")).json()["items"]
    assert [(t["trial_number"], t["status"], t["converged"]) for t in trials] == [
        (1, "Dispatched", None),
        (2, "Succeeded", True),
    ]

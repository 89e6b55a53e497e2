"""What the import derives is what our service computes: the job's own rows are the oracle.

A job runs on our service (a failed exploration, the pruning stage, the
bandit, a trial still running); its rows are then written as Zeus's tables
would hold them (what Zeus keeps, nothing more) and mapped back. Everything
Zeus does not keep (costs, reward statistics, pruning rounds, failure
reasons) must come out as our service stored it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import select

from app.store.tables import arm, batch_size, job, trial
from app.zeus_import.mapping import map_job
from app.zeus_import.source import ZeusJob, zeus_job, zeus_trial
from tests.support.zeus_server import dispatch, recurrences

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


def _naive(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC).replace(tzinfo=None)


def as_zeus_stores_it(
    job_row: Any, trials: list[Any], arms: list[Any], batch_sizes: list[int]
) -> ZeusJob:
    ours = job_row._mapping
    values = {c.name: ours[c.name] for c in zeus_job.c if c.name in ours}
    values |= {
        "mab_random_generator_state": json.dumps(ours["rng_state"]),
        "exp_default_batch_size": ours["default_batch_size"],
        "stage": str(ours["stage"]),
    }
    zeus_trials = tuple(
        {c.name: t._mapping[c.name] for c in zeus_trial.c}
        | {"type": str(t.type), "status": str(t.status),
           "start_timestamp": _naive(t.start_timestamp), "end_timestamp": _naive(t.end_timestamp)}
        for t in trials
    )  # fmt: skip
    zeus_arms = tuple(dict(a._mapping) for a in arms)
    return ZeusJob(values, tuple(batch_sizes), zeus_trials, zeus_arms)


async def test_derived_values_are_those_our_service_stored(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    await recurrences(client, 0, 2)
    lost = await dispatch(client)  # an exploration ended without a result: explored again
    assert (await client.patch("/trials", json=lost.body())).status_code == 200
    await recurrences(client, 2, 10)
    running = await dispatch(client)

    async with app.state.engine.connect() as conn:
        job_row = (await conn.execute(select(job))).one()
        trials = (await conn.execute(select(trial).order_by(trial.c.trial_number))).all()
        arms = (await conn.execute(select(arm).order_by(arm.c.batch_size))).all()
        sizes = (await conn.execute(select(batch_size).order_by(batch_size.c.batch_size))).all()
    assert job_row.stage == "MAB" and len(arms) == 3 and job_row.rng_state is not None

    mapped = map_job(
        as_zeus_stores_it(job_row, trials, arms, [s.batch_size for s in sizes]), now=NOW
    )

    assert mapped.batch_sizes == [dict(s._mapping) for s in sizes]
    derived = ("cost", "pruning_round", "failure_reason", "type", "status", "converged")
    assert [{k: t[k] for k in derived} for t in mapped.trials] == [
        {k: t._mapping[k] for k in derived} for t in trials
    ]
    assert [t["trial_number"] for t in mapped.trials if t["failure_reason"]] == [lost.trial_number]
    leases = {t["trial_number"]: t["lease_renewed_at"] for t in mapped.trials}
    assert leases[running.trial_number] == NOW  # a running trial's lease starts at the import
    assert leases[lost.trial_number] == trials[lost.trial_number - 1].start_timestamp
    for name in ("stage", "min_cost", "min_cost_batch_size", "next_trial_number", "rng_state"):
        assert mapped.job[name] == job_row._mapping[name], name
    assert [a.batch_size for a in mapped.arms] == [a.batch_size for a in arms]
    assert [a.param_mean for a in mapped.arms] == [a.param_mean for a in arms]

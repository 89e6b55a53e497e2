"""A trainer's prefixes are checked before a use case writes anything: another
team's trainer neither renews nor expires a trial; its owner's reports renew it."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI

from app import reads, service
from app.bandit import Lease
from app.errors import ForbiddenError
from app.roles import Principal, Role
from app.schemas import TrainingResult, TrialId, TrialRead
from tests.helpers import register

LEASE = Lease(3600)
T0 = service.utcnow().replace(microsecond=0)
DUE = T0 + timedelta(seconds=LEASE.seconds / 2)  # a renewal is due, the lease holds
EXPIRED = T0 + timedelta(seconds=LEASE.seconds + 1)
OWNER = Principal("team-job", Role.TRAINER, frozenset({"job"}))
OTHER = Principal("team-other", Role.TRAINER, frozenset({"other"}))


def _result(trial: TrialId) -> TrainingResult:
    return TrainingResult(
        **trial.model_dump(), time=10.0, energy=1000.0, metric=0.1, current_epoch=1
    )


async def _trial(app: FastAPI, job_id: str) -> TrialRead:
    page = await reads.list_trials(
        app.state.engine, job_id, status=None, trial_type=None, after=None, limit=10, lease=LEASE
    )
    (only,) = page.items
    return only


async def test_another_teams_trainer_neither_renews_nor_expires_a_trial(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    engine = app.state.engine
    job_id = await register(client)  # job_id_prefix "job"
    trial = await service.dispatch_trial(engine, job_id, now=T0, lease=LEASE, caller=OWNER)
    before = (await _trial(app, job_id)).lease_expires_at
    assert before == T0 + timedelta(seconds=LEASE.seconds)

    with pytest.raises(ForbiddenError, match="job_id_prefix 'other'"):
        await service.report_result(engine, _result(trial), now=DUE, lease=LEASE, caller=OTHER)
    assert (await _trial(app, job_id)).lease_expires_at == before  # not renewed
    with pytest.raises(ForbiddenError):
        await service.end_trial(engine, trial, now=DUE, caller=OTHER)
    with pytest.raises(ForbiddenError):
        await service.dispatch_trial(engine, job_id, now=EXPIRED, lease=LEASE, caller=OTHER)
    assert (await _trial(app, job_id)).status == "Dispatched"  # not expired by it

    answer = await service.report_result(engine, _result(trial), now=DUE, lease=LEASE, caller=OWNER)
    assert answer.stop_train is False
    renewed = await _trial(app, job_id)
    assert renewed.lease_expires_at == DUE + timedelta(seconds=LEASE.seconds)

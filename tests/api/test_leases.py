"""Trial leases on both databases: expiry on dispatch and by the sweep, renewal by reports.

Time is injected (the service's ``now``), so nothing sleeps except the one
test of the background sweep that the app's lifespan starts.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from app import reads, service, sweeper
from app.bandit import Lease
from app.config import Settings
from app.http.app import create_app
from app.schemas import ReportResponse, TrainingResult, TrialId, TrialRead
from tests.helpers import register

LEASE = Lease(3600)
T0 = service.utcnow().replace(microsecond=0)
EXPIRED = T0 + timedelta(seconds=LEASE.seconds + 1)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def _dispatch(app: FastAPI, job_id: str, at: datetime) -> TrialId:
    return await service.dispatch_trial(app.state.engine, job_id, now=at, lease=LEASE)


async def _report(
    app: FastAPI, trial: TrialId, at: datetime, *, epoch: int = 1, final: bool = False
) -> ReportResponse:
    result = TrainingResult(
        **trial.model_dump(),
        time=10.0 * epoch,
        energy=1000.0 * epoch,
        metric=0.95 if final else 0.1,
        current_epoch=epoch,
    )
    return await service.report_result(app.state.engine, result, now=at, lease=LEASE)


async def _trials(app: FastAPI, job_id: str, lease: Lease | None = LEASE) -> list[TrialRead]:
    page = await reads.list_trials(
        app.state.engine, job_id, status=None, trial_type=None, after=None, limit=500, lease=lease
    )
    return page.items


def _shape(trials: list[TrialRead]) -> list[tuple[Any, ...]]:
    return [(t.type, t.batch_size, t.status, t.failure_reason) for t in trials]


async def test_an_abandoned_exploration_expires_and_its_batch_size_is_explored_again(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    job_id = await register(client)
    lost = await _dispatch(app, job_id, T0)  # its process is killed: no report, no PATCH
    assert (lost.batch_size, lost.trial_number) == (64, 1)
    # Within the lease the exploration blocks round 0: a Concurrent trial.
    concurrent = await _dispatch(app, job_id, _at(LEASE.seconds - 1))
    assert concurrent.trial_number == 2
    again = await _dispatch(app, job_id, EXPIRED)
    assert (again.batch_size, again.trial_number) == (64, 3)
    trials = await _trials(app, job_id)
    assert _shape(trials) == [
        ("Exploration", 64, "Failed", "LeaseExpired"),
        ("Concurrent", 64, "Dispatched", None),  # renewed at its dispatch: still live
        ("Exploration", 64, "Dispatched", None),
    ]
    assert trials[0].end_timestamp == EXPIRED and trials[0].lease_expires_at is None
    assert trials[2].lease_expires_at == EXPIRED + timedelta(seconds=LEASE.seconds)
    # The read API over HTTP shows the reason and the expiry (the app's lease: 7200 s).
    shown = (await client.get(f"/jobs/{job_id}/trials")).json()["items"]
    assert shown[0]["failure_reason"] == "LeaseExpired"
    assert shown[0]["lease_expires_at"] is None
    expiry = datetime.fromisoformat(shown[2]["lease_expires_at"])
    assert expiry == EXPIRED + timedelta(seconds=Settings().trial_lease_s)


async def test_a_dispatch_runs_the_expiry_only_when_a_trial_may_have_lapsed(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    job_id = await register(client)
    expiries: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("UPDATE trial SET status="):
            expiries.append(statement)

    sync_engine = app.state.engine.sync_engine
    event.listen(sync_engine, "before_cursor_execute", record)
    try:
        first = await _dispatch(app, job_id, T0)  # nothing runs yet
        await _dispatch(app, job_id, _at(LEASE.seconds - 1))  # the first is within its lease
        assert expiries == []
        await _dispatch(app, job_id, EXPIRED)  # the first lapsed (its Concurrent one did not)
        assert len(expiries) == 1
    finally:
        event.remove(sync_engine, "before_cursor_execute", record)
    trials = await _trials(app, job_id)
    assert [(t.trial_number, t.status) for t in trials] == [
        (first.trial_number, "Failed"), (2, "Dispatched"), (3, "Dispatched")
    ]  # fmt: skip


async def test_a_trial_that_reports_more_often_than_its_lease_never_expires(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    job_id = await register(client, max_epochs=100)
    trial = await _dispatch(app, job_id, T0)
    renew_every = LEASE.renew_every.total_seconds()
    gap = LEASE.seconds - renew_every  # the longest gap the guarantee allows
    # Worst case: a report just before its renewal is due (it does not renew),
    # then the longest allowed gap. Checked just before each report.
    stored, at, epoch = 0.0, 0.0, 0
    for step in range(6):
        at += renew_every - 1 if step % 2 == 0 else gap
        assert await sweeper.expire_leases(app.state.engine, now=_at(at), lease=LEASE) == 0
        epoch += 1
        answer = await _report(app, trial, _at(at), epoch=epoch)
        assert answer.stop_train is False, (step, answer)
        renewed = at - stored >= renew_every
        stored = at if renewed else stored
        (shown,) = await _trials(app, job_id)
        assert shown.lease_expires_at == _at(stored + LEASE.seconds), step
    final = await _report(app, trial, _at(at + gap), epoch=epoch + 1, final=True)
    assert final.stop_train is True and final.converged is True
    (shown,) = await _trials(app, job_id)
    assert shown.status == "Succeeded" and shown.lease_expires_at is None


async def test_a_trial_that_stops_reporting_expires_one_lease_after_its_last_renewal(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    job_id = await register(client)
    trial = await _dispatch(app, job_id, T0)
    assert (await _report(app, trial, _at(100))).stop_train is False  # renews: 100 s > 60 s
    engine = app.state.engine
    assert await sweeper.expire_leases(engine, now=_at(100 + LEASE.seconds), lease=LEASE) == 0
    assert await sweeper.expire_leases(engine, now=_at(101 + LEASE.seconds), lease=LEASE) == 1
    (shown,) = await _trials(app, job_id)
    assert (shown.status, shown.failure_reason) == ("Failed", "LeaseExpired")


async def test_bandit_stage_and_concurrent_trials_expire_too(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    bandit_job = await register(client, job_id="job-bandit", num_pruning_rounds=0)
    pulled = await _dispatch(app, bandit_job, T0)
    pruning_job = await register(client, job_id="job-pruning")
    await _dispatch(app, pruning_job, T0)
    await _dispatch(app, pruning_job, T0)  # Concurrent: the exploration is running
    await _dispatch(app, bandit_job, EXPIRED)
    await _dispatch(app, pruning_job, EXPIRED)
    first, second = await _trials(app, bandit_job)
    assert _shape([first]) == [("MAB", pulled.batch_size, "Failed", "LeaseExpired")]
    assert (second.type, second.status, second.failure_reason) == ("MAB", "Dispatched", None)
    assert _shape(await _trials(app, pruning_job)) == [
        ("Exploration", 64, "Failed", "LeaseExpired"),
        ("Concurrent", 64, "Failed", "LeaseExpired"),
        ("Exploration", 64, "Dispatched", None),
    ]
    # The bandit's arms learnt nothing from the expired pull.
    arms = (await client.get(f"/jobs/{bandit_job}/arms")).json()
    assert all(a["num_observations"] == 0 for a in arms), arms


async def test_a_report_on_an_expired_trial_gets_stop_train_and_changes_nothing(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    job_id = await register(client)
    trial = await _dispatch(app, job_id, T0)
    assert await sweeper.expire_leases(app.state.engine, now=EXPIRED, lease=LEASE) == 1
    before = (await client.get(f"/jobs/{job_id}")).json()
    (expired,) = await _trials(app, job_id)
    for final in (False, True):  # a "keep training" report and a converging one
        answer = await _report(app, trial, EXPIRED + timedelta(seconds=5), final=final)
        assert answer.stop_train is True and answer.converged is False, answer
        assert "lease expired" in answer.message, answer.message
    # Over HTTP too: 200, not an error.
    response = await client.post(
        "/report",
        json={**trial.model_dump(), "time": 1.0, "energy": 1.0, "metric": 0.99,
              "current_epoch": 1},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.json()["stop_train"] is True and "lease expired" in response.json()["message"]
    assert await _trials(app, job_id) == [expired]
    assert (await client.get(f"/jobs/{job_id}")).json() == before  # min_cost etc. unchanged
    ended = await client.patch("/trials", json=trial.model_dump())
    assert ended.status_code == 200
    assert (ended.json()["status"], ended.json()["failure_reason"]) == ("Failed", "LeaseExpired")


async def test_a_patched_trial_keeps_its_reason_ended(client: httpx.AsyncClient) -> None:
    job_id = await register(client)
    trial = (await client.get("/jobs/batch_size", params={"job_id": job_id})).json()
    assert (await client.get(f"/jobs/{job_id}/trials")).json()["items"][0]["lease_expires_at"]
    ended = (await client.patch("/trials", json=trial)).json()
    assert (ended["status"], ended["failure_reason"], ended["lease_expires_at"]) == (
        "Failed",
        "Ended",
        None,
    )
    shown = (await client.get(f"/jobs/{job_id}/trials")).json()["items"][0]
    assert (shown["failure_reason"], shown["lease_expires_at"]) == ("Ended", None)


async def test_the_sweep_expires_trials_of_idle_jobs_and_only_lapsed_ones(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    idle = [await register(client, job_id=f"job-idle-{i}") for i in range(3)]
    for job_id in idle:
        await _dispatch(app, job_id, T0)
    live = await register(client, job_id="job-live")
    await _dispatch(app, live, _at(10))
    engine: AsyncEngine = app.state.engine
    assert await sweeper.expire_leases(engine, now=_at(LEASE.seconds + 5), lease=LEASE) == 3
    assert await sweeper.expire_leases(engine, now=_at(LEASE.seconds + 5), lease=LEASE) == 0
    for job_id in idle:
        assert _shape(await _trials(app, job_id)) == [("Exploration", 64, "Failed", "LeaseExpired")]
    assert _shape(await _trials(app, live)) == [("Exploration", 64, "Dispatched", None)]
    assert (
        await sweeper.expire_leases(engine, now=EXPIRED + timedelta(hours=9), lease=Lease(0)) == 0
    )


async def test_leases_off_never_expire_and_show_no_expiry(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    job_id = await register(client)
    off = Lease(0)
    trial = await service.dispatch_trial(app.state.engine, job_id, now=T0, lease=off)
    later = T0 + timedelta(days=365)
    await service.dispatch_trial(app.state.engine, job_id, now=later, lease=off)
    assert await sweeper.expire_leases(app.state.engine, now=later, lease=off) == 0
    trials = await _trials(app, job_id, lease=off)
    assert [(t.status, t.lease_expires_at) for t in trials] == [("Dispatched", None)] * 2
    result = TrainingResult(**trial.model_dump(), time=1.0, energy=1.0, metric=0.1,
                            current_epoch=1)  # fmt: skip
    answer = await service.report_result(app.state.engine, result, now=later, lease=off)
    assert answer.stop_train is False


async def test_the_app_sweeps_in_the_background(
    app: FastAPI, client: httpx.AsyncClient, database_url: str
) -> None:
    # A second server process on the same database, with a one-second lease:
    # its lifespan's sweep (every second) expires the trial of an idle job.
    job_id = await register(client)
    trial = (await client.get("/jobs/batch_size", params={"job_id": job_id})).json()
    replica = create_app(Settings(database_url=database_url, log_level="WARNING", trial_lease_s=1))
    async with replica.router.lifespan_context(replica):
        for _ in range(50):
            await asyncio.sleep(0.1)
            shown = (await client.get(f"/jobs/{job_id}/trials")).json()["items"][0]
            if shown["status"] == "Failed":
                break
    assert (shown["status"], shown["failure_reason"]) == ("Failed", "LeaseExpired"), shown
    assert trial["trial_number"] == shown["trial_number"]

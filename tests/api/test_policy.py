"""The job's policy over HTTP: registration, the read API, and the predictive rules served."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError
from sqlalchemy import event, select

from app.bandit import Policy
from app.config import Settings
from app.store.tables import batch_size, trial
from tests.helpers import dispatch, register, report, spec

# One batch size, no pruning rounds: the bandit from the first trial. Energy 0,
# eta 0.5 and max_power 100 W make a report's cost 50 x its time.
ONE_ARM: dict[str, Any] = {"batch_sizes": [16], "default_batch_size": 16,
                           "num_pruning_rounds": 0, "max_power": 100.0}  # fmt: skip


async def test_a_registration_without_policy_gets_zeus_and_the_read_api_shows_it(
    client: httpx.AsyncClient,
) -> None:
    created = await client.post("/jobs", json=spec())
    assert created.status_code == 201 and created.json()["policy"] == "zeus"
    assert (await client.get("/jobs/job-1")).json()["policy"] == "zeus"
    (listed,) = (await client.get("/jobs")).json()["items"]
    assert listed["policy"] == "zeus"
    again = await client.post("/jobs", json=spec(policy="zeus"))
    assert again.status_code == 200 and again.json()["policy"] == "zeus"


async def test_a_predictive_job_matches_a_registration_without_policy_not_another_policy(
    client: httpx.AsyncClient,
) -> None:
    created = await client.post("/jobs", json=spec(policy="predictive"))
    assert created.status_code == 201 and created.json()["policy"] == "predictive"
    again = await client.post("/jobs", json=spec())  # a Zeus client: whatever is stored
    assert again.status_code == 200 and again.json()["policy"] == "predictive"
    other = await client.post("/jobs", json=spec(policy="zeus"))
    assert other.status_code == 409
    assert "different policy" in other.json()["message"]
    page = (await client.get("/jobs/job-1")).json()
    assert page["policy"] == "predictive"
    assert (await client.post("/jobs", json=spec(policy="fast"))).status_code == 422


async def test_the_default_policy_names_new_jobs_only(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings: Settings = app.state.settings
    monkeypatch.setattr(app.state, "settings", settings.model_copy(
        update={"default_policy": Policy.PREDICTIVE}))  # fmt: skip
    assert (await client.post("/jobs", json=spec())).json()["policy"] == "predictive"
    monkeypatch.setattr(app.state, "settings", settings)  # the operator changes it back
    again = await client.post("/jobs", json=spec())
    assert again.status_code == 200 and again.json()["policy"] == "predictive"
    other = await client.post("/jobs", json=spec(job_id="job-2"))
    assert other.json()["policy"] == "zeus"


def test_bso_default_policy_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().default_policy is Policy.ZEUS
    monkeypatch.setenv("BSO_DEFAULT_POLICY", "Predictive")
    assert Settings().default_policy is Policy.PREDICTIVE
    monkeypatch.setenv("BSO_DEFAULT_POLICY", "fast")
    with pytest.raises(ValidationError):
        Settings()


async def _one_arm_history(
    client: httpx.AsyncClient, policy: str, epochs: int = 4
) -> tuple[str, dict[str, Any]]:
    """A first trial converged at ``epochs`` for 500 each; a second one after two reports."""
    job_id = await register(client, **ONE_ARM, policy=policy)
    first = await dispatch(client, job_id)
    done = await report(client, first, time=10.0 * epochs, energy=0.0, metric=0.95, epoch=epochs)
    assert done.json()["converged"] is True  # min_cost 2000 at 4; 16 needs >= 4 epochs
    second = await dispatch(client, job_id)
    for epoch, time in ((1, 10.0), (2, 20.0)):  # 1000 + epochs - 3 more of 500 <= 2 x min_cost
        going = await report(client, second, time=time, energy=0.0, metric=0.1, epoch=epoch)
        assert going.json()["stop_train"] is False
    return job_id, second


async def test_a_predictive_stop_records_the_predicted_cost(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    job_id, second = await _one_arm_history(client, "predictive", epochs=5)
    # 16 needs 5 epochs: 3500 + 1 more epoch of 2500 = 6000 > 2 x 2500 before epoch 5, so
    # stopped, counted with its predicted cost to epoch 5: 3500 + 2 x 2500 = 8500.
    stopped = await report(client, second, time=70.0, energy=0.0, metric=0.1, epoch=3)
    assert stopped.json()["stop_train"] is True and stopped.json()["converged"] is False
    assert "predicted" in stopped.json()["message"]
    stored = (await client.get(f"/jobs/{job_id}/trials")).json()["items"][1]
    assert (stored["time"], stored["energy"], stored["cost"]) == (70.0, 0.0, 8500.0)
    (arm,) = (await client.get(f"/jobs/{job_id}/arms")).json()
    assert arm["num_observations"] == 2
    assert arm["param_mean"] == pytest.approx(-(2500.0 + 8500.0) / 2)
    job = (await client.get(f"/jobs/{job_id}")).json()
    assert job["min_cost"] == 2500.0
    async with app.state.engine.connect() as conn:
        epochs = (await conn.execute(select(batch_size.c.min_converged_epochs))).scalar_one()
        last = (await conn.execute(
            select(trial.c.last_epoch, trial.c.last_cost).where(trial.c.trial_number == 2)
        )).one()  # fmt: skip
    assert epochs == 5
    assert tuple(last) == (2, 1000.0)  # the last non-final report


async def test_a_zeus_job_waits_until_the_cost_crosses_the_bound(client: httpx.AsyncClient) -> None:
    job_id, second = await _one_arm_history(client, "zeus")
    going = await report(client, second, time=70.0, energy=0.0, metric=0.1, epoch=3)
    assert going.json()["stop_train"] is False  # 3500 <= 4000
    crossed = await report(client, second, time=90.0, energy=0.0, metric=0.1, epoch=4)
    assert crossed.json()["stop_train"] is True
    stored = (await client.get(f"/jobs/{job_id}/trials")).json()["items"][1]
    assert stored["cost"] == 4500.0


async def test_explorations_keep_their_pruning_round(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    job_id = await register(client, batch_sizes=[32, 64], default_batch_size=64)
    for _ in range(2):
        t = await dispatch(client, job_id)
        await report(client, t, time=1.0, energy=1.0, metric=0.95, epoch=1)
    third = await dispatch(client, job_id)
    async with app.state.engine.connect() as conn:
        rounds = (await conn.execute(
            select(trial.c.trial_number, trial.c.pruning_round).order_by(trial.c.trial_number)
        )).all()  # fmt: skip
    assert [tuple(r) for r in rounds] == [(1, 0), (2, 0), (3, 1)]
    assert third["batch_size"] == 64  # round 2 starts from the cheapest (equal: the default)


@contextmanager
def statements(app: FastAPI) -> Iterator[list[str]]:
    """The SQL statements the app's engine sends while the block runs."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.split(None, 1)[0].upper() not in {"BEGIN", "COMMIT", "ROLLBACK"}:
            seen.append(statement)

    sync_engine = app.state.engine.sync_engine
    event.listen(sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(sync_engine, "before_cursor_execute", record)


@pytest.mark.parametrize("policy", ["zeus", "predictive"])
async def test_what_a_non_final_and_a_final_report_cost(
    app: FastAPI, client: httpx.AsyncClient, policy: str
) -> None:
    job_id = await register(client, policy=policy)
    t = await dispatch(client, job_id)
    with statements(app) as going:
        answer = await report(client, t, time=1.0, energy=1.0, metric=0.1, epoch=1)
    assert answer.json()["stop_train"] is False
    with statements(app) as final:
        answer = await report(client, t, time=2.0, energy=2.0, metric=0.95, epoch=2)
    assert answer.json()["stop_train"] is True
    # One read (on PostgreSQL with the lease renewal folded in, renewing
    # nothing this soon after dispatch); a predictive job's also stores the report.
    assert len(going) == (1 if policy == "zeus" else 2), going
    assert all("last_epoch =" not in s for s in going[:1])
    if policy == "predictive":
        assert going[1].startswith("UPDATE trial SET last_epoch=")
    # The final report: the same statements for both policies (the batch
    # size's fewest epochs ride in its statistics' UPDATE).
    assert len(final) == (4 if app.state.engine.dialect.name == "postgresql" else 6), final


async def _epochs(
    client: httpx.AsyncClient, trial: dict[str, Any], costs: dict[int, float], reach: int | None
) -> list[dict[str, Any]]:
    """Report ``costs`` (epoch -> cumulative cost, 50 x time) in order; reach the target at
    epoch ``reach``. Returns every answer."""
    answers = []
    for epoch, cost in sorted(costs.items()):
        metric = 0.95 if reach is not None and epoch >= reach else 0.1
        response = await report(client, trial, time=cost / 50.0, energy=0.0, metric=metric,
                                epoch=epoch)  # fmt: skip
        answers.append(response.json())
    return answers


async def test_a_batch_size_its_own_history_says_converges_is_not_stopped_by_another_s(
    client: httpx.AsyncClient,
) -> None:
    """Issue 21: 128 needed 12 epochs, so 64 "needs 6"; but 64 reached the target in 4."""
    job_id = await register(
        client, batch_sizes=[32, 64, 128], default_batch_size=128, beta_knob=1.5,
        max_epochs=12, max_power=100.0, policy="predictive",
    )  # fmt: skip
    first = await dispatch(client, job_id)
    assert first["batch_size"] == 128
    assert (await _epochs(client, first, {1: 100.0, 12: 1200.0}, 12))[-1]["converged"]
    second = await dispatch(client, job_id)
    assert second["batch_size"] == 64
    assert (await _epochs(client, second, {1: 90.0, 4: 360.0}, 4))[-1]["converged"]
    third = await dispatch(client, job_id)  # 32: over 1.5 x 360 at epoch 2
    assert not (await _epochs(client, third, {1: 200.0, 2: 600.0}, None))[-1]["converged"]
    # Round 2 keeps only 64 (128 costs over 1.5x it) and starts there.
    fourth = await dispatch(client, job_id)
    assert (fourth["batch_size"], fourth["trial_number"]) == (64, 4)
    # After 2 epochs of 100: 128's bound says 4 more (600 > 1.5 x 360 = 540); 64's own
    # history says 2 more (400): it goes on, and converges at epoch 4.
    answers = await _epochs(client, fourth, {1: 100.0, 2: 200.0, 4: 400.0}, 4)
    assert [a["stop_train"] for a in answers] == [False, False, True]
    assert answers[-1]["converged"] is True


@pytest.mark.parametrize("policy", ["zeus", "predictive"])
async def test_the_predictive_bound_reads_a_typical_run_of_the_best_batch_size(
    client: httpx.AsyncClient, policy: str
) -> None:
    job_id = await register(client, **ONE_ARM, beta_knob=1.5, policy=policy)
    for cost in (1000.0, 1400.0):  # min_cost 1000; 16's mean 1200
        trial = await dispatch(client, job_id)
        assert (await _epochs(client, trial, {1: 100.0, 4: cost}, 4))[-1]["converged"]
    trial = await dispatch(client, job_id)
    # 1700 reaches the target: over 1.5 x min_cost (1500), within 1.5 x 1200 (1800).
    (answer,) = await _epochs(client, trial, {5: 1700.0}, 5)
    assert answer["stop_train"] is True
    assert answer["converged"] is (policy == "predictive")
    if policy == "zeus":
        assert "beta_knob 1.5 * min_cost 1000" in answer["message"]

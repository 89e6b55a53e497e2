from __future__ import annotations

import httpx

from tests.helpers import dispatch, end, finish, register, report


async def test_a_repeated_final_report_gets_the_same_answer_and_changes_nothing(
    client: httpx.AsyncClient,
) -> None:
    job_id = await register(client)
    trial = await dispatch(client, job_id)
    first = await finish(client, trial, cost_time=10.0)
    again = await report(client, trial, time=99.0, energy=9900.0, metric=0.99, epoch=3)
    assert again.status_code == 200
    assert again.json()["stop_train"] is True
    assert again.json()["converged"] is first["converged"] is True
    stored = (await client.get(f"/jobs/{job_id}/trials")).json()["items"][0]
    assert (stored["time"], stored["energy"], stored["cost"]) == (10.0, 1000.0, 2000.0)


async def test_a_report_on_a_failed_trial_says_it_ended_without_a_result(
    client: httpx.AsyncClient,
) -> None:
    job_id = await register(client)
    trial = await dispatch(client, job_id)
    await end(client, trial)
    response = await finish(client, trial, cost_time=1.0)
    assert response["converged"] is False
    assert "without a result" in response["message"]
    stored = (await client.get(f"/jobs/{job_id}/trials")).json()["items"][0]
    assert stored["status"] == "Failed" and stored["time"] is None


async def test_ending_a_succeeded_trial_leaves_it_succeeded(client: httpx.AsyncClient) -> None:
    job_id = await register(client)
    trial = await dispatch(client, job_id)
    await finish(client, trial, cost_time=1.0)
    ended = await end(client, trial)
    assert ended.status_code == 200 and ended.json()["status"] == "Succeeded"


async def test_a_report_with_another_batch_size_is_refused(client: httpx.AsyncClient) -> None:
    job_id = await register(client)
    trial = await dispatch(client, job_id)
    wrong = {**trial, "batch_size": 32}
    response = await report(client, wrong, time=1.0, energy=1.0, metric=0.99, epoch=1)
    assert response.status_code == 409
    assert "batch size 64, not 32" in response.json()["message"]
    assert (await end(client, wrong)).status_code == 409
    stored = (await client.get(f"/jobs/{job_id}/trials")).json()["items"][0]
    assert stored["status"] == "Dispatched"


async def test_a_report_on_an_unknown_trial_is_404(client: httpx.AsyncClient) -> None:
    job_id = await register(client)
    ghost = {"job_id": job_id, "batch_size": 64, "trial_number": 5}
    response = await report(client, ghost, time=1.0, energy=1.0, metric=0.5, epoch=1)
    assert response.status_code == 404
    assert "no trial 5" in response.json()["message"]

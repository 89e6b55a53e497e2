from __future__ import annotations

import httpx

from tests.helpers import dispatch, finish, register


async def test_a_job_can_be_registered_dispatched_and_reported(client: httpx.AsyncClient) -> None:
    job_id = await register(client)
    trial = await dispatch(client, job_id)
    assert trial == {"job_id": job_id, "batch_size": 64, "trial_number": 1}
    body = await finish(client, trial, cost_time=10.0)
    assert body["converged"] is True
    job = (await client.get(f"/jobs/{job_id}")).json()
    assert job["min_cost"] is not None
    assert job["created_at"].endswith("Z") or job["created_at"].endswith("+00:00")

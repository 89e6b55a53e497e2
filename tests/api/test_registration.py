from __future__ import annotations

import re

import httpx

from tests.helpers import dispatch, register, spec


async def test_registering_creates_the_job_and_echoes_its_spec(client: httpx.AsyncClient) -> None:
    response = await client.post("/jobs", json=spec(batch_sizes=[128, 16, 64, 32]))
    assert response.status_code == 201
    body = response.json()
    assert body["job_id"] == "job-1"
    assert body["batch_sizes"] == [16, 32, 64, 128]
    assert body["max_power"] == 300.0 and body["gpu_model"] == "NVIDIA A40"


async def test_registering_the_same_spec_again_is_a_200_no_op(client: httpx.AsyncClient) -> None:
    await register(client)
    trial = await dispatch(client, "job-1")
    again = await client.post("/jobs", json=spec(batch_sizes=[128, 64, 32, 16]))
    assert again.status_code == 200
    assert again.json()["job_id"] == "job-1"
    # The job kept its state.
    assert (await dispatch(client, "job-1"))["trial_number"] == trial["trial_number"] + 1


async def test_a_different_spec_under_the_same_id_is_a_409_naming_the_field(
    client: httpx.AsyncClient,
) -> None:
    await register(client)
    response = await client.post("/jobs", json=spec(max_epochs=11))
    assert response.status_code == 409
    assert "max_epochs" in response.json()["message"]
    response = await client.post("/jobs", json=spec(batch_sizes=[16, 32, 64]))
    assert response.status_code == 409
    assert "batch_sizes" in response.json()["message"]


async def test_a_null_job_id_gets_the_prefix_and_eight_hex_digits(
    client: httpx.AsyncClient,
) -> None:
    first = await client.post("/jobs", json=spec(job_id=None))
    second = await client.post("/jobs", json=spec(job_id=None))
    assert first.status_code == second.status_code == 201
    ids = {first.json()["job_id"], second.json()["job_id"]}
    assert len(ids) == 2
    assert all(re.fullmatch(r"job-[0-9a-f]{8}", i) for i in ids)


async def test_deleting_removes_everything_and_the_id_can_be_registered_anew(
    client: httpx.AsyncClient,
) -> None:
    await register(client)
    await dispatch(client, "job-1")
    response = await client.delete("/jobs", params={"job_id": "job-1"})
    assert response.status_code == 200
    assert (await client.get("/jobs/job-1")).status_code == 404
    assert (await client.get("/jobs/batch_size", params={"job_id": "job-1"})).status_code == 404
    assert (await client.delete("/jobs", params={"job_id": "job-1"})).status_code == 404
    await register(client, max_epochs=3)  # a different spec is fine now
    assert (await dispatch(client, "job-1"))["trial_number"] == 1


async def test_unknown_jobs_are_404_with_a_message(client: httpx.AsyncClient) -> None:
    for response in (
        await client.get("/jobs/batch_size", params={"job_id": "nope"}),
        await client.get("/jobs/nope"),
        await client.get("/jobs/nope/trials"),
        await client.get("/jobs/nope/arms"),
        await client.delete("/jobs", params={"job_id": "nope"}),
        await client.patch("/trials", json={"job_id": "nope", "batch_size": 1, "trial_number": 1}),
    ):
        assert response.status_code == 404
        assert "nope" in response.json()["message"]

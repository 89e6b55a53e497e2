from __future__ import annotations

import httpx

from tests.helpers import dispatch, end, finish, register


async def test_jobs_are_listed_in_pages_and_filtered_by_prefix(client: httpx.AsyncClient) -> None:
    for i in range(5):
        await register(client, job_id=f"job-{i}")
    await register(client, job_id="other-1", job_id_prefix="other")
    page = (await client.get("/jobs", params={"job_id_prefix": "job", "limit": 2})).json()
    assert [j["job_id"] for j in page["items"]] == ["job-0", "job-1"]
    assert page["next_after"] == "job-1"
    rest = (
        await client.get("/jobs", params={"job_id_prefix": "job", "after": "job-1", "limit": 10})
    ).json()
    assert [j["job_id"] for j in rest["items"]] == ["job-2", "job-3", "job-4"]
    assert rest["next_after"] is None
    everything = (await client.get("/jobs")).json()
    assert len(everything["items"]) == 6


async def test_trials_are_paged_and_filtered_by_status_and_type(client: httpx.AsyncClient) -> None:
    job_id = await register(client)
    first = await dispatch(client, job_id)
    second = await dispatch(client, job_id)  # concurrent
    third = await dispatch(client, job_id)  # concurrent
    await finish(client, first, cost_time=2.0)
    await end(client, second)
    page = (await client.get(f"/jobs/{job_id}/trials", params={"limit": 2})).json()
    assert [t["trial_number"] for t in page["items"]] == [1, 2]
    assert page["next_after"] == 2
    page = (await client.get(f"/jobs/{job_id}/trials", params={"after": 2})).json()
    assert [t["trial_number"] for t in page["items"]] == [third["trial_number"]]
    failed = (await client.get(f"/jobs/{job_id}/trials", params={"status": "Failed"})).json()
    assert [t["trial_number"] for t in failed["items"]] == [2]
    explored = (await client.get(f"/jobs/{job_id}/trials", params={"type": "Exploration"})).json()
    assert [t["trial_number"] for t in explored["items"]] == [1]
    done = explored["items"][0]
    assert done["converged"] is True and done["cost"] == 400.0
    assert done["end_timestamp"] >= done["start_timestamp"]


async def test_a_job_shows_its_pruning_progress(client: httpx.AsyncClient) -> None:
    job_id = await register(client)
    job = (await client.get(f"/jobs/{job_id}")).json()
    assert job["exploration"] == {
        "round": 0,
        "default_batch_size": 64,
        "candidates": [16, 32, 64, 128],
        "walk": 1,
    }
    assert job["num_trials"] == 0 and job["stage"] == "Pruning"
    for _ in range(4):
        trial = await dispatch(client, job_id)
        await finish(
            client, trial, cost_time={16: 3.0, 32: 2.0, 64: 2.5, 128: 3.5}[trial["batch_size"]]
        )
    job = (await client.get(f"/jobs/{job_id}")).json()
    assert job["exploration"] == {
        "round": 1,
        "default_batch_size": 32,
        "candidates": [16, 32, 64, 128],
        "walk": 1,
    }
    assert (job["min_cost"], job["min_cost_batch_size"]) == (400.0, 32)
    assert job["pruning_dead_end"] is None


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok", "detail": None}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ok"


async def test_the_openapi_document_describes_every_endpoint_with_errors(
    client: httpx.AsyncClient,
) -> None:
    doc = (await client.get("/openapi.json")).json()
    ops = {(m, p): op for p, item in doc["paths"].items() for m, op in item.items()}
    assert {("post", "/jobs"), ("get", "/jobs/batch_size"), ("post", "/report"),
            ("patch", "/trials"), ("delete", "/jobs")} <= set(ops)  # fmt: skip
    for (method, path), op in ops.items():
        assert op.get("description"), (method, path)
        if path not in ("/healthz",):
            assert any(code.startswith(("4", "5")) for code in op["responses"]), (method, path)
    report = ops[("post", "/report")]["responses"]
    assert report["404"]["content"]["application/json"]["example"]["message"]
    schemas = doc["components"]["schemas"]
    for (method, path), op in ops.items():
        for code, response in op["responses"].items():
            content = response.get("content", {}).get("application/json", {})
            schema = content.get("schema", {})
            schema = schema.get("items", schema)  # a list of models: its items
            ref = schema.get("$ref", "").rsplit("/", 1)[-1]
            has_example = "example" in content or bool(ref and schemas[ref].get("examples"))
            assert has_example, (method, path, code)

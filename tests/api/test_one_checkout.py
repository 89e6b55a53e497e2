"""Every request of the Zeus API checks out one pooled connection, no more (issue 24).

A use case runs on one connection: a lock-free read that finds it must write
(a final report, the end of a running trial, a new registration) goes on in a
transaction on the same connection instead of checking out another. Counted
with the pool's "checkout" event, per request type, on both databases.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import event
from sqlalchemy.pool import Pool

from tests.helpers import SPEC, dispatch, end, finish, register, report


@contextmanager
def checkouts(app: FastAPI) -> Iterator[list[int]]:
    """Count the pool's checkouts while in the block: ``count[0]``."""
    pool: Pool = app.state.engine.sync_engine.pool
    count = [0]

    def checked_out(*_: Any) -> None:
        count[0] += 1

    event.listen(pool, "checkout", checked_out)
    try:
        yield count
    finally:
        event.remove(pool, "checkout", checked_out)


async def test_each_zeus_request_checks_out_one_connection(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    seen: dict[str, int] = {}

    async def counted(name: str, request: Any) -> httpx.Response:
        with checkouts(app) as count:
            response: httpx.Response = await request
        seen[name] = count[0]
        assert response.status_code < 300, (name, response.text)
        return response

    created = await counted("registration (201)", client.post("/jobs", json=SPEC))
    job_id = created.json()["job_id"]
    await counted("re-registration (200)", client.post("/jobs", json={**SPEC, "job_id": job_id}))
    response = await counted("dispatch", client.get("/jobs/batch_size", params={"job_id": job_id}))
    trial = response.json()
    keep = {**trial, "time": 1.0, "energy": 100.0, "metric": 0.1, "current_epoch": 1}
    kept = await counted("report, not final", client.post("/report", json=keep))
    assert kept.json()["stop_train"] is False
    final = {**keep, "metric": 0.95, "current_epoch": 2}
    ended = await counted("final report", client.post("/report", json=final))
    assert ended.json()["stop_train"] is True
    await counted("report on an ended trial", client.post("/report", json=final))
    await counted("PATCH /trials, ended trial", client.patch("/trials", json=trial))
    running = await dispatch(client, job_id)
    await counted("PATCH /trials, running trial", client.patch("/trials", json=running))
    failed = (await client.get(f"/jobs/{job_id}/trials", params={"status": "Failed"})).json()
    assert [t["trial_number"] for t in failed["items"]] == [running["trial_number"]]
    await counted("DELETE /jobs", client.delete("/jobs", params={"job_id": job_id}))

    assert seen == dict.fromkeys(seen, 1), seen
    assert len(seen) == 9


async def test_a_final_report_in_the_bandit_stage_checks_out_one_connection(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    job_id = await register(client)
    while True:  # through the pruning stage
        trial = await dispatch(client, job_id)
        if (
            trial["trial_number"] > 1
            and (await client.get(f"/jobs/{job_id}")).json()["stage"] == "MAB"
        ):
            break
        await finish(client, trial, cost_time=float(trial["batch_size"]))
    with checkouts(app) as count:
        response = await report(client, trial, time=5.0, energy=500.0, metric=0.95, epoch=1)
    assert response.json()["stop_train"] is True
    assert count[0] == 1
    with checkouts(app) as count:
        assert (await end(client, trial)).json()["status"] == "Succeeded"
    assert count[0] == 1

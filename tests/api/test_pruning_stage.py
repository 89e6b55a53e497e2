from __future__ import annotations

from datetime import timedelta

import httpx
from fastapi import FastAPI

from app import service
from app.bandit import Lease
from tests.helpers import dispatch, end, finish, register, report


async def test_explorations_follow_the_pruning_order_over_http(client: httpx.AsyncClient) -> None:
    job_id = await register(client, num_pruning_rounds=1)
    seen = []
    outcomes = {64: True, 32: False, 128: True}
    for _ in range(3):
        trial = await dispatch(client, job_id)
        seen.append(trial["batch_size"])
        await finish(client, trial, cost_time=float(trial["batch_size"]),
                     converged=outcomes[trial["batch_size"]], epoch=10)  # fmt: skip
    # 32 failed, so 16 is skipped; the round ends after 128 and the bandit starts.
    assert seen == [64, 32, 128]
    job = (await client.get(f"/jobs/{job_id}")).json()
    assert job["stage"] == "Pruning"
    nxt = await dispatch(client, job_id)
    assert nxt["batch_size"] in (64, 128)
    job = (await client.get(f"/jobs/{job_id}")).json()
    assert job["stage"] == "MAB" and job["exploration"] is None
    arms = (await client.get(f"/jobs/{job_id}/arms")).json()
    assert [a["batch_size"] for a in arms] == [64, 128]
    trials = (await client.get(f"/jobs/{job_id}/trials", params={"type": "MAB"})).json()
    assert [t["trial_number"] for t in trials["items"]] == [4]


async def test_while_an_exploration_runs_others_get_concurrent_trials_of_the_best_so_far(
    client: httpx.AsyncClient,
) -> None:
    job_id = await register(client)
    first = await dispatch(client, job_id)
    assert first["batch_size"] == 64
    concurrent = await dispatch(client, job_id)
    assert concurrent["batch_size"] == 64  # min_cost_batch_size starts as the default
    await finish(client, first, cost_time=5.0)
    second = await dispatch(client, job_id)
    assert second["batch_size"] == 32
    third = await dispatch(client, job_id)
    assert third["batch_size"] == 64  # the cheapest converged so far
    trials = (await client.get(f"/jobs/{job_id}/trials")).json()["items"]
    assert [t["type"] for t in trials] == ["Exploration", "Concurrent", "Exploration", "Concurrent"]


async def test_a_non_converged_first_trial_leaves_min_cost_unset(client: httpx.AsyncClient) -> None:
    job_id = await register(client)
    trial = await dispatch(client, job_id)
    body = await finish(client, trial, cost_time=5.0, converged=False, epoch=10)
    assert body["converged"] is False
    job = (await client.get(f"/jobs/{job_id}")).json()
    assert job["min_cost"] is None
    assert job["min_cost_batch_size"] == 64


async def test_only_cheaper_converged_trials_lower_min_cost(client: httpx.AsyncClient) -> None:
    job_id = await register(client, beta_knob=None)
    t1 = await dispatch(client, job_id)
    await finish(client, t1, cost_time=10.0)  # 64 converges at cost 2000
    t2 = await dispatch(client, job_id)
    await finish(client, t2, cost_time=1.0, converged=False, epoch=10)  # 32: cheap, failed
    job = (await client.get(f"/jobs/{job_id}")).json()
    assert (job["min_cost"], job["min_cost_batch_size"]) == (2000.0, 64)
    t3 = await dispatch(client, job_id)  # 128
    await finish(client, t3, cost_time=4.0)
    job = (await client.get(f"/jobs/{job_id}")).json()
    assert (job["min_cost"], job["min_cost_batch_size"]) == (800.0, 128)


async def test_a_patched_exploration_is_explored_again(client: httpx.AsyncClient) -> None:
    job_id = await register(client)
    first = await dispatch(client, job_id)
    ended = await end(client, first)
    assert ended.status_code == 200 and ended.json()["status"] == "Failed"
    again = await dispatch(client, job_id)
    assert (again["batch_size"], again["trial_number"]) == (64, 2)
    trials = (await client.get(f"/jobs/{job_id}/trials")).json()["items"]
    assert [(t["type"], t["status"]) for t in trials] == [
        ("Exploration", "Failed"),
        ("Exploration", "Dispatched"),
    ]


async def test_a_round_with_nothing_converged_is_walked_again_then_the_job_goes_on(
    client: httpx.AsyncClient,
) -> None:
    job_id = await register(client, batch_sizes=[32, 64], default_batch_size=32)
    seen = []
    for walk in (1, 2):
        for _ in range(2):
            trial = await dispatch(client, job_id)
            seen.append(trial["batch_size"])
            await finish(client, trial, cost_time=1.0, converged=False, epoch=10)
        if walk == 1:
            job = (await client.get(f"/jobs/{job_id}")).json()
            assert job["exploration"] == {"round": 0, "default_batch_size": 32,
                                          "candidates": [32, 64], "walk": 2}  # fmt: skip
            assert job["pruning_dead_end"] is None
    assert seen == [32, 64, 32, 64]
    # Both walks converged nowhere: no 409, the default is served from now on.
    for _ in range(3):
        trial = await dispatch(client, job_id)
        assert trial["batch_size"] == 32
        await finish(client, trial, cost_time=1.0, converged=False, epoch=10)
    job = (await client.get(f"/jobs/{job_id}")).json()
    assert job["stage"] == "MAB" and job["exploration"] is None
    dead_end = job["pruning_dead_end"]
    assert dead_end["round"] == 0 and dead_end["batch_sizes"] == [32]
    assert "No batch size converged in pruning round 1" in dead_end["message"]
    arms = (await client.get(f"/jobs/{job_id}/arms")).json()
    assert [a["batch_size"] for a in arms] == [32]
    # Once a run of it converges, the job has its min cost like any other.
    trial = await dispatch(client, job_id)
    await finish(client, trial, cost_time=1.0, converged=True, epoch=3)
    assert (await client.get(f"/jobs/{job_id}")).json()["min_cost_batch_size"] == 32


async def test_early_stopping_ends_a_trial_costing_beta_times_min_cost(
    client: httpx.AsyncClient,
) -> None:
    job_id = await register(client)
    t1 = await dispatch(client, job_id)
    await finish(client, t1, cost_time=10.0)  # min_cost 2000, bound 4000
    t2 = await dispatch(client, job_id)
    going = await report(client, t2, time=15.0, energy=1500.0, metric=0.1, epoch=1)  # 3000
    assert going.json() == {
        "stop_train": False,
        "converged": False,
        "message": "Stop condition not met, keep training.",
    }
    over = await report(client, t2, time=25.0, energy=2500.0, metric=0.1, epoch=2)  # 5000
    assert over.json()["stop_train"] is True and over.json()["converged"] is False
    assert "cost upper bound" in over.json()["message"]


async def test_a_stale_exploration_expires_and_is_explored_again(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    job_id = await register(client)
    lost = await dispatch(client, job_id)  # its client dies without PATCH /trials
    database = app.state.engine
    later = service.utcnow() + timedelta(hours=2)
    # Within the timeout the exploration still blocks: a Concurrent trial.
    blocked = await service.dispatch_trial(database, job_id, now=later, lease=Lease(3 * 3600))
    assert blocked.batch_size == 64
    again = await service.dispatch_trial(database, job_id, now=later, lease=Lease(3600))
    assert (again.batch_size, again.trial_number) == (64, 3)
    trials = (await client.get(f"/jobs/{job_id}/trials")).json()["items"]
    assert [(t["type"], t["status"]) for t in trials] == [
        ("Exploration", "Failed"),
        ("Concurrent", "Dispatched"),
        ("Exploration", "Dispatched"),
    ]
    late = await finish(client, lost, cost_time=1.0)
    assert late["converged"] is False and "lease expired" in late["message"]

"""Job groups over HTTP: registration, refusals, the read side, and the rules served."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from tests.helpers import dispatch, register, report, spec

# eta 0.5, max_power 300 W and no energy: a report's cost is 150 x its time.
GROUPED: dict[str, Any] = {"group": "bert", "max_epochs": 10}


async def test_a_job_joins_its_group_and_the_read_side_shows_it(
    client: httpx.AsyncClient,
) -> None:
    created = await client.post("/jobs", json=spec(**GROUPED))
    assert created.status_code == 201 and created.json()["group"] == "bert"
    assert (await client.get("/jobs/job-1")).json()["group"] == "bert"
    (listed,) = (await client.get("/jobs")).json()["items"]
    assert listed["group"] == "bert"
    group = (await client.get("/groups/bert")).json()
    assert (group["group"], group["target_metric"], group["max_epochs"]) == ("bert", 0.9, 10)
    assert group["higher_is_better_metric"] is True
    assert [b["batch_size"] for b in group["batch_sizes"]] == [16, 32, 64, 128]
    assert all(b["runs"] == 0 and b["min_epochs"] is None for b in group["batch_sizes"])
    (member,) = group["members"]
    assert member == {"job_id": "job-1", "gpu_model": "NVIDIA A40", "number_of_gpus": 1,
                      "policy": "zeus", "stage": "Pruning", "num_trials": 0, "min_cost": None,
                      "best_batch_size": None}  # fmt: skip
    ungrouped = await client.post("/jobs", json=spec(job_id="job-2"))
    assert ungrouped.json()["group"] is None
    assert (await client.get("/groups/nothing")).status_code == 404


@pytest.mark.parametrize(
    "change", [{"target_metric": 0.8}, {"higher_is_better_metric": False}, {"max_epochs": 11}]
)
async def test_a_job_that_defines_converged_differently_is_refused_and_not_created(
    client: httpx.AsyncClient, change: dict[str, Any]
) -> None:
    await register(client, **GROUPED)
    refused = await client.post("/jobs", json=spec(job_id="job-2", **{**GROUPED, **change}))
    assert refused.status_code == 409, refused.text
    assert "Job group 'bert'" in refused.json()["message"]
    assert next(iter(change)) in refused.json()["message"]
    assert (await client.get("/jobs/job-2")).status_code == 404


async def test_re_registration_without_a_group_matches_and_another_group_is_refused(
    client: httpx.AsyncClient,
) -> None:
    await register(client, **GROUPED)
    again = await client.post("/jobs", json=spec(max_epochs=10))  # a Zeus client: no group
    assert again.status_code == 200 and again.json()["group"] == "bert"
    other = await client.post("/jobs", json=spec(max_epochs=10, group="gpt"))
    assert other.status_code == 409 and "group" in other.json()["message"]


async def test_group_by_prefix_puts_jobs_without_a_group_in_their_prefix_s_group(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = app.state.settings.model_copy(update={"group_by_prefix": True})
    monkeypatch.setattr(app.state, "settings", settings)
    first = await client.post("/jobs", json=spec(job_id=None))
    second = await client.post("/jobs", json=spec(job_id=None, gpu_model="Tesla V100"))
    explicit = await client.post("/jobs", json=spec(job_id="job-x", group="mine"))
    assert [r.json()["group"] for r in (first, second, explicit)] == ["job", "job", "mine"]
    members = (await client.get("/groups/job")).json()["members"]
    assert {m["gpu_model"] for m in members} == {"NVIDIA A40", "Tesla V100"}


def test_bso_group_by_prefix_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().group_by_prefix is False
    monkeypatch.setenv("BSO_GROUP_BY_PREFIX", "true")
    assert Settings().group_by_prefix is True


async def _converge(client: httpx.AsyncClient, job_id: str, cost: float, epoch: int) -> int:
    trial = await dispatch(client, job_id)
    done = await report(client, trial, time=cost / 150, energy=0.0, metric=0.95, epoch=epoch)
    assert done.json()["converged"] is True, done.text
    return int(trial["batch_size"])


async def test_a_joining_gpu_starts_at_its_sibling_s_best_and_skips_what_never_converged(
    client: httpx.AsyncClient,
) -> None:
    a40 = await register(client, **GROUPED)
    assert await _converge(client, a40, 3000.0, 4) == 64  # the default first
    assert await _converge(client, a40, 1500.0, 4) == 32  # down: cheaper, so the best
    sixteen = await dispatch(client, a40)
    assert sixteen["batch_size"] == 16
    exhausted = await report(client, sixteen, time=10.0, energy=0.0, metric=0.1, epoch=10)
    assert exhausted.json()["stop_train"] is True and exhausted.json()["converged"] is False

    group = {b["batch_size"]: b for b in (await client.get("/groups/bert")).json()["batch_sizes"]}
    assert (group[16]["runs"], group[16]["exhausted"], group[16]["never_converged"]) == (1, 1, True)
    assert (group[32]["converged"], group[32]["min_epochs"], group[32]["mean_epochs"]) == (1, 4, 4)

    v100 = await register(
        client, job_id="job-v100", gpu_model="Tesla V100", default_batch_size=128, **GROUPED
    )
    # Rule 3: the A40's best batch size first, not the default 128.
    assert await _converge(client, v100, 1000.0, 4) == 32
    # Rule 1: 16 never converged anywhere, so the walk down ends at once and goes up.
    assert (await dispatch(client, v100))["batch_size"] == 64
    job = (await client.get("/jobs/job-v100")).json()
    assert job["exploration"]["default_batch_size"] == 32


async def test_a_run_the_group_s_epochs_doom_is_stopped_at_epoch_two(
    client: httpx.AsyncClient,
) -> None:
    a40 = await register(client, **GROUPED)
    assert await _converge(client, a40, 3000.0, 8) == 64  # 64 needs 8 epochs, so 32 >= 4
    v100 = await register(client, job_id="job-v100", gpu_model="Tesla V100", **GROUPED)
    assert await _converge(client, v100, 1600.0, 8) == 64  # min_cost 1600
    trial = await dispatch(client, v100)
    assert trial["batch_size"] == 32
    # Epoch 1: 400; epoch 2: 800, i.e. 400 an epoch: 800 + 2 more epochs = 1600 <= 1.5 x 1600.
    for epoch in (1, 2):
        going = await report(client, trial, time=epoch * 400 / 150, energy=0.0, metric=0.1,
                             epoch=epoch)  # fmt: skip
        assert going.json()["stop_train"] is False, going.text
    # Epoch 3: 2100 (1300 that epoch): 2100 + 1 x 1300 = 3400 > 1.5 x 1600 = 2400, yet
    # 2100 <= 2 x 1600: the paper's rule alone would go on.
    stopped = await report(client, trial, time=2100 / 150, energy=0.0, metric=0.1, epoch=3)
    body = stopped.json()
    assert body["stop_train"] is True and body["converged"] is False, body
    assert "job group" in body["message"]
    trials = (await client.get("/jobs/job-v100/trials")).json()["items"]
    assert trials[-1]["cost"] == pytest.approx(3400.0)  # counted with its predicted cost
    runs = {b["batch_size"]: b for b in (await client.get("/groups/bert")).json()["batch_sizes"]}
    assert (runs[32]["runs"], runs[32]["exhausted"], runs[32]["converged"]) == (1, 0, 0)
    assert runs[32]["never_converged"] is True  # rule 1: stopped for its cost, converged nowhere
    assert (runs[64]["converged"], runs[64]["min_epochs"]) == (2, 8)

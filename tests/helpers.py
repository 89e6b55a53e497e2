"""Small builders shared by the HTTP tests."""

from __future__ import annotations

import base64
from typing import Any

import httpx
from fastapi import FastAPI

from app import tokens
from app.roles import Role
from app.service import utcnow

SPEC: dict[str, Any] = {
    "job_id": "job-1",
    "job_id_prefix": "job",
    "batch_sizes": [16, 32, 64, 128],
    "default_batch_size": 64,
    "eta_knob": 0.5,
    "beta_knob": 2.0,
    "target_metric": 0.9,
    "higher_is_better_metric": True,
    "max_epochs": 10,
    "num_pruning_rounds": 2,
    "window_size": 0,
    "mab_prior_mean": 0.0,
    "mab_prior_precision": 0.0,
    "mab_num_explorations": 2,
    "mab_seed": 7,
    "max_power": 300.0,
    "number_of_gpus": 1,
    "gpu_model": "NVIDIA A40",
}


def spec(**overrides: Any) -> dict[str, Any]:
    return {**SPEC, **overrides}


async def register(client: httpx.AsyncClient, **overrides: Any) -> str:
    response = await client.post("/jobs", json=spec(**overrides))
    assert response.status_code in (200, 201), response.text
    return str(response.json()["job_id"])


async def dispatch(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    response = await client.get("/jobs/batch_size", params={"job_id": job_id})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def report(
    client: httpx.AsyncClient,
    trial: dict[str, Any],
    *,
    time: float,
    energy: float,
    metric: float,
    epoch: int,
) -> httpx.Response:
    return await client.post(
        "/report",
        json={**trial, "time": time, "energy": energy, "metric": metric, "current_epoch": epoch},
    )


async def finish(
    client: httpx.AsyncClient,
    trial: dict[str, Any],
    *,
    cost_time: float,
    converged: bool = True,
    epoch: int = 1,
) -> dict[str, Any]:
    """Send one final report: reaches the target (or spends the epoch budget)."""
    metric = 0.95 if converged else 0.1
    response = await report(
        client, trial, time=cost_time, energy=cost_time * 100, metric=metric, epoch=epoch
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["stop_train"] is True, body
    return body


async def end(client: httpx.AsyncClient, trial: dict[str, Any]) -> httpx.Response:
    return await client.patch("/trials", json=trial)


# ------------------------------------------------------------------ tokens


async def new_token(app: FastAPI, name: str, role: Role, *prefixes: str) -> str:
    """Create a token in the app's database (as `bso tokens create` does); the token."""
    created = await tokens.create_token(app.state.engine, name, role, prefixes, now=utcnow())
    return created.token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(token: str, user: str = "trainer") -> dict[str, str]:
    """HTTP Basic with the token as password, as httpx sends URL credentials."""
    encoded = base64.b64encode(f"{user}:{token}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}

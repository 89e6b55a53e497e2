"""Who may call what with BSO_AUTH=required: every endpoint x every kind of caller.

The table below is the contract (docs/auth.md, "Tokens and roles"); each cell is
one request against a job of its own, so no cell depends on another.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app import tokens
from app.roles import Role
from app.service import utcnow
from tests.helpers import bearer, new_token, spec

CALLERS = (
    "none",  # no Authorization header
    "malformed",  # not a bso_ token at all
    "wrong",  # an existing token's id with another secret
    "revoked",  # an admin's token, revoked
    "viewer",
    "trainer",  # a trainer of every prefix
    "trainer:job",  # a trainer of the jobs' prefix, "job"
    "trainer:other",  # a trainer of another prefix only
    "admin",
)

# fmt: off
EXPECTED: dict[str, tuple[int, ...]] = {
    #                                 none mal wrong rev viewer trainer t:job t:other admin
    "POST /jobs":                    (401, 401, 401, 401, 403, 201, 201, 403, 201),
    "GET /jobs/batch_size":          (401, 401, 401, 401, 403, 200, 200, 403, 200),
    "POST /report":                  (401, 401, 401, 401, 403, 200, 200, 403, 200),
    "PATCH /trials":                 (401, 401, 401, 401, 403, 200, 200, 403, 200),
    "DELETE /jobs":                  (401, 401, 401, 401, 403, 403, 403, 403, 200),
    "GET /jobs":                     (401, 401, 401, 401, 200, 200, 200, 200, 200),
    "GET /jobs/{job_id}":            (401, 401, 401, 401, 200, 200, 200, 200, 200),
    "GET /jobs/{job_id}/trials":     (401, 401, 401, 401, 200, 200, 200, 200, 200),
    "GET /jobs/{job_id}/arms":       (401, 401, 401, 401, 200, 200, 200, 200, 200),
    "GET /groups/{group}":           (401, 401, 401, 401, 200, 200, 200, 200, 200),
    "GET /dashboard":                (401, 401, 401, 401, 200, 200, 200, 200, 200),
    "GET /dashboard/jobs/{job_id}":  (401, 401, 401, 401, 200, 200, 200, 200, 200),
    "GET /dashboard/groups/{group}": (401, 401, 401, 401, 200, 200, 200, 200, 200),
    "GET /metrics":                  (401, 401, 401, 401, 200, 200, 200, 200, 200),
    "GET /healthz":                  (200, 200, 200, 200, 200, 200, 200, 200, 200),
    "GET /readyz":                   (200, 200, 200, 200, 200, 200, 200, 200, 200),
    "GET /docs":                     (200, 200, 200, 200, 200, 200, 200, 200, 200),
    "GET /redoc":                    (200, 200, 200, 200, 200, 200, 200, 200, 200),
    "GET /openapi.json":             (200, 200, 200, 200, 200, 200, 200, 200, 200),
    "GET /static/dashboard.css":     (200, 200, 200, 200, 200, 200, 200, 200, 200),
}
# fmt: on

Send = Callable[[httpx.AsyncClient, dict[str, Any], dict[str, str]], Awaitable[httpx.Response]]


def _requests() -> dict[str, Send]:
    """How each row calls its endpoint, given a fresh job with one running trial."""

    def get(path: str, **params: str) -> Send:
        async def send(
            http: httpx.AsyncClient, trial: dict[str, Any], headers: dict[str, str]
        ) -> httpx.Response:
            values = {k: v.format(**trial) for k, v in params.items()}
            return await http.get(path.format(**trial), params=values, headers=headers)

        return send

    async def register(
        http: httpx.AsyncClient, trial: dict[str, Any], headers: dict[str, str]
    ) -> httpx.Response:
        body = spec(job_id=f"{trial['job_id']}-new", job_id_prefix="job")
        return await http.post("/jobs", json=body, headers=headers)

    async def report(
        http: httpx.AsyncClient, trial: dict[str, Any], headers: dict[str, str]
    ) -> httpx.Response:
        result = {**trial, "time": 1.0, "energy": 1.0, "metric": 0.1, "current_epoch": 1}
        return await http.post("/report", json=result, headers=headers)

    async def end(
        http: httpx.AsyncClient, trial: dict[str, Any], headers: dict[str, str]
    ) -> httpx.Response:
        return await http.patch("/trials", json=trial, headers=headers)

    async def delete(
        http: httpx.AsyncClient, trial: dict[str, Any], headers: dict[str, str]
    ) -> httpx.Response:
        return await http.delete("/jobs", params={"job_id": trial["job_id"]}, headers=headers)

    return {
        "POST /jobs": register,
        "GET /jobs/batch_size": get("/jobs/batch_size", job_id="{job_id}"),
        "POST /report": report,
        "PATCH /trials": end,
        "DELETE /jobs": delete,
        "GET /jobs": get("/jobs"),
        "GET /jobs/{job_id}": get("/jobs/{job_id}"),
        "GET /jobs/{job_id}/trials": get("/jobs/{job_id}/trials"),
        "GET /jobs/{job_id}/arms": get("/jobs/{job_id}/arms"),
        "GET /groups/{group}": get("/groups/group-{job_id}"),
        "GET /dashboard": get("/dashboard"),
        "GET /dashboard/jobs/{job_id}": get("/dashboard/jobs/{job_id}"),
        "GET /dashboard/groups/{group}": get("/dashboard/groups/group-{job_id}"),
        "GET /metrics": get("/metrics"),
        "GET /healthz": get("/healthz"),
        "GET /readyz": get("/readyz"),
        "GET /docs": get("/docs"),
        "GET /redoc": get("/redoc"),
        "GET /openapi.json": get("/openapi.json"),
        "GET /static/dashboard.css": get("/static/dashboard.css"),
    }


REQUESTS = _requests()


@dataclass
class World:
    """The callers' headers, and an admin to set up each cell's job."""

    headers: dict[str, dict[str, str]]
    admin: dict[str, str]
    jobs: itertools.count[int]

    async def job_with_a_trial(self, http: httpx.AsyncClient) -> dict[str, Any]:
        job_id = f"job-{next(self.jobs)}"
        body = spec(job_id=job_id, group=f"group-{job_id}")  # the group routes' group
        created = await http.post("/jobs", json=body, headers=self.admin)
        assert created.status_code == 201, created.text
        trial = await http.get("/jobs/batch_size", params={"job_id": job_id}, headers=self.admin)
        assert trial.status_code == 200, trial.text
        dispatched: dict[str, Any] = trial.json()
        return dispatched


@pytest.fixture
async def world(auth_app: FastAPI) -> World:
    admin = await new_token(auth_app, "admin", Role.ADMIN)
    revoked = await new_token(auth_app, "gone", Role.ADMIN)
    await tokens.revoke_token(auth_app.state.engine, "gone", now=utcnow())
    viewer = await new_token(auth_app, "viewer", Role.VIEWER)
    token_id = viewer.split("_")[1]
    headers = {
        "none": {},
        "malformed": bearer("not-a-token"),
        "wrong": bearer(f"bso_{token_id}_{'A' * 43}"),
        "revoked": bearer(revoked),
        "viewer": bearer(viewer),
        "trainer": bearer(await new_token(auth_app, "trainer", Role.TRAINER)),
        "trainer:job": bearer(await new_token(auth_app, "team-job", Role.TRAINER, "job", "x")),
        "trainer:other": bearer(await new_token(auth_app, "team-other", Role.TRAINER, "other")),
        "admin": bearer(admin),
    }
    return World(headers, bearer(admin), itertools.count(1))


def _check_refusal(caller: str, row: str, response: httpx.Response) -> None:
    """401s challenge for credentials; 403s say which role or prefix is missing."""
    assert response.headers["content-type"] == "application/json", (caller, row)
    message = response.json()["message"]
    if response.status_code == 401:
        assert response.headers["www-authenticate"] == 'Bearer, Basic realm="bso"'
        assert "revoked" in message if caller == "revoked" else "revoked" not in message
    else:
        assert response.status_code == 403 and "www-authenticate" not in response.headers
        if caller == "trainer:other" and row != "DELETE /jobs":
            assert "job_id_prefix 'other'" in message and "'job'" in message, message
        else:
            assert "role" in message and caller.split(":")[0] in message, message


@pytest.mark.parametrize("caller", CALLERS)
async def test_each_caller_gets_the_answers_of_the_table(
    auth_client: httpx.AsyncClient, world: World, caller: str
) -> None:
    column = CALLERS.index(caller)
    answers: dict[str, int] = {}
    for row, send in REQUESTS.items():
        guarded = EXPECTED[row][CALLERS.index("none")] == 401
        trial = await world.job_with_a_trial(auth_client) if guarded else {}
        response = await send(auth_client, trial, world.headers[caller])
        answers[row] = response.status_code
        if response.status_code in (401, 403):
            _check_refusal(caller, row, response)
    assert answers == {row: statuses[column] for row, statuses in EXPECTED.items()}


async def test_the_table_covers_every_route_of_the_app(auth_app: FastAPI) -> None:
    # path_format: "/dashboard/jobs/{job_id}" for "/dashboard/jobs/{job_id:path}".
    routes = {
        f"{method} {getattr(route, 'path_format', getattr(route, 'path', ''))}"
        for route in auth_app.routes
        for method in getattr(route, "methods", None) or ()
        if method != "HEAD"
    }
    static = {r for r in routes if r.startswith("GET /static")}
    assert "POST /report" in routes and "GET /dashboard" in routes, routes  # it sees them all
    assert routes - static - {"GET /docs", "GET /redoc"} <= set(EXPECTED), routes
    assert {r for r in EXPECTED if r.startswith("GET /static")}, "one static file is tried"

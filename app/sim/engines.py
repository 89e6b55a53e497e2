"""The optimiser a replay talks to: the Zeus wire API over HTTP, or the pure algorithm.

:class:`~app.sim.protocol.Engine` is the four calls a training script makes: register the job,
get a batch size (a new trial), report after every epoch, end the trial.
:class:`HttpEngine` speaks only the Zeus wire API (POST /jobs,
GET /jobs/batch_size, POST /report, PATCH /trials), so it drives this service
in-process, this service over the network, or a Zeus server alike;
:func:`in_process_service` runs this service on a temporary SQLite database.
:class:`~app.sim.pure_engine.PureEngine` mirrors the service in memory.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

from app.schemas import JobSpec
from app.sim.protocol import Engine, EngineError, ReportAnswer, TrialId
from app.urls import redact_url


def wire_body(spec: JobSpec) -> dict[str, Any]:
    """The POST /jobs body; without ``policy`` or ``group`` when None (a Zeus client's body)."""
    body = spec.model_dump(mode="json")
    for name in ("policy", "group"):
        if body[name] is None:
            del body[name]
    return body


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text or response.reason_phrase
    if isinstance(body, dict):
        return str(body.get("message") or body.get("detail") or body)
    return str(body)


class HttpEngine:
    """A Zeus client: the four wire calls over an ``httpx.AsyncClient``."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    @classmethod
    def for_url(
        cls, base_url: str, *, timeout: float = 30.0, token: str | None = None
    ) -> HttpEngine:
        """Talk to a running server (this service or a Zeus server); ``token`` as a Bearer."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        client = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout, headers=headers)
        return cls(client)

    @classmethod
    def for_app(cls, app: Any) -> HttpEngine:
        """Talk to an ASGI app in this process (its lifespan is the caller's business)."""
        transport = httpx.ASGITransport(app=app)
        return cls(httpx.AsyncClient(transport=transport, base_url="http://bso.local"))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> HttpEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        try:
            response = await self._client.request(method, path, json=body, params=params)
        except httpx.TransportError as exc:
            where = redact_url(str(self._client.base_url))
            raise EngineError(503, f"cannot reach {where}: {exc!r}") from exc
        if response.is_error:
            raise EngineError(response.status_code, _error_message(response))
        return response.json() if response.content else None

    async def register(self, spec: JobSpec) -> str:
        created = await self._call("POST", "/jobs", body=wire_body(spec))
        return str(created["job_id"])

    async def next_trial(self, job_id: str) -> TrialId:
        got = await self._call("GET", "/jobs/batch_size", params={"job_id": job_id})
        return TrialId(str(got["job_id"]), int(got["batch_size"]), int(got["trial_number"]))

    async def report(
        self, trial: TrialId, *, time: float, energy: float, metric: float, current_epoch: int
    ) -> ReportAnswer:
        body = {**asdict(trial), "time": time, "energy": energy, "metric": metric}
        answer = await self._call("POST", "/report", body={**body, "current_epoch": current_epoch})
        return ReportAnswer(
            bool(answer["stop_train"]), bool(answer["converged"]), str(answer.get("message", ""))
        )

    async def end_trial(self, trial: TrialId) -> None:
        await self._call("PATCH", "/trials", body=asdict(trial))


def sqlite_url(directory: Path) -> str:
    """An aiosqlite URL for a database file in ``directory``."""
    return f"sqlite+aiosqlite:///{directory / 'sim.db'}"


@asynccontextmanager
async def in_process_service(
    directory: Path | None = None, *, log_level: str = "WARNING"
) -> AsyncIterator[HttpEngine]:
    """Run the service in this process, on a fresh SQLite database (temporary by default).

    The schema is made by the migrations (``upgrade_head``) and the app's
    lifespan runs around the requests, as under a real server.
    """
    from app.config import Settings
    from app.http.app import create_app
    from app.store.migrate import upgrade_head

    with tempfile.TemporaryDirectory(prefix="bso-sim-") as scratch:
        url = sqlite_url(directory if directory is not None else Path(scratch))
        # Alembic's env.py runs its own event loop: keep it off ours.
        await asyncio.to_thread(upgrade_head, url)
        app = create_app(Settings(database_url=url, log_level=log_level))
        async with app.router.lifespan_context(app), HttpEngine.for_app(app) as engine:
            yield engine


@asynccontextmanager
async def open_engine(
    url: str | None, *, pure: bool, token: str | None = None
) -> AsyncIterator[Engine]:
    """The engine ``bso simulate`` asked for: a server at ``url``, pure, or in-process."""
    from app.sim.pure_engine import PureEngine  # numpy and the algorithm: only when asked for

    if url is not None:
        async with HttpEngine.for_url(url, token=token) as engine:
            yield engine
    elif pure:
        yield PureEngine()
    else:
        async with in_process_service() as engine:
            yield engine

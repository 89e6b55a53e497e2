"""A real ``bso serve`` per backend for the client's tests, and a client that records its calls.

Each test uses its own job ids (``job_id`` fixture), so tests sharing a server
never see each other's jobs.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from bso_client import EnergyMeter, Host, JobSpec, Retry

from app.store.migrate import upgrade_head
from tests.conftest import RUN_ID
from tests.support.server import (
    Server,
    bso_args,
    clean_env,
    drop_postgres_database,
    free_port,
    fresh_postgres_database,
    running_server,
    worker_name,
)

# Tests wait fractions of a second, not the production backoff.
FAST = Retry(attempts=3, backoff=0.01, max_backoff=0.05, max_retry_after=2.0)


def database(kind: str, folder: Path, name: str) -> tuple[str, str | None]:
    """A fresh, migrated database: its URL, and the PostgreSQL name to drop after."""
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{folder / f'{name}.db'}"
        pg_name = None
    else:
        pg_name = f"bso_client_{RUN_ID}_{worker_name()}_{name}"
        url = fresh_postgres_database(pg_name)
    upgrade_head(url)
    return url, pg_name


@contextmanager
def serve(
    url: str, folder: Path, *, port: int = 0, settings: Mapping[str, str] | None = None
) -> Iterator[Server]:
    """``bso serve`` on ``url`` (on ``port``, else a free one) until the block ends."""
    port = port or free_port()
    env = clean_env(BSO_DATABASE_URL=url, BSO_LOG_LEVEL="WARNING", **(settings or {}))
    args = bso_args("serve", "--host", "127.0.0.1", "--port", str(port))
    with running_server(args, port=port, env=env, log_dir=folder, cwd=folder) as server:
        yield server


@contextmanager
def served_database(
    kind: str, folder: Path, name: str, **settings: str
) -> Iterator[tuple[Server, str]]:
    url, pg_name = database(kind, folder, name)
    try:
        with serve(url, folder, settings=settings) as server:
            yield server, url
    finally:
        if pg_name is not None:
            drop_postgres_database(pg_name)


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def server(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``bso serve`` with authentication off, on a fresh database of each backend."""
    folder = tmp_path_factory.mktemp(f"client-{backend}")
    with served_database(backend, folder, "open") as (running, _):
        yield running


@pytest.fixture(autouse=True)
def spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test keeps unanswered reports in a folder of its own (BSO_SPOOL_DIR)."""
    folder = tmp_path / "spool"
    monkeypatch.setenv("BSO_SPOOL_DIR", str(folder))
    return folder


@pytest.fixture
def job_id(request: pytest.FixtureRequest) -> str:
    """A job id no other test uses: ``client-<8 hex>``."""
    return f"client-{uuid.uuid4().hex[:8]}"


def spec(job_id: str | None, **overrides: Any) -> JobSpec:
    values: dict[str, Any] = {
        "job_id": job_id,
        "job_id_prefix": "client",
        "batch_sizes": [16, 32, 64],
        "default_batch_size": 32,
        "target_metric": 0.9,
        "max_epochs": 5,
        "mab_seed": 7,
    }
    values.update(overrides)
    return JobSpec(**values)


class CountingMeter:
    """An ``EnergyMeter`` whose energy moves only when the test says a GPU worked."""

    name = "counting"
    measures_energy = True

    def __init__(self, host: Host | None = None) -> None:
        self.host = host or Host("NVIDIA A40", 2, 600.0)
        self.total = 0.0
        self.closed = False

    def work(self, joules: float) -> None:
        self.total += joules

    def joules(self) -> float:
        return self.total

    def close(self) -> None:
        self.closed = True


assert isinstance(CountingMeter(), EnergyMeter)


@dataclass
class Recorder:
    """Every request the client sent and the status it got, from httpx's event hooks."""

    requests: list[httpx.Request] = field(default_factory=list)
    answers: list[tuple[str, str, int]] = field(default_factory=list)

    def on_request(self, request: httpx.Request) -> None:
        self.requests.append(request)

    def on_response(self, response: httpx.Response) -> None:
        request = response.request
        self.answers.append((request.method, request.url.path, response.status_code))

    async def aon_request(self, request: httpx.Request) -> None:
        self.on_request(request)

    async def aon_response(self, response: httpx.Response) -> None:
        self.on_response(response)

    def client(self) -> httpx.Client:
        hooks: dict[str, list[Callable[..., Any]]] = {
            "request": [self.on_request],
            "response": [self.on_response],
        }
        return httpx.Client(event_hooks=hooks)

    def async_client(self) -> httpx.AsyncClient:
        hooks: dict[str, list[Callable[..., Any]]] = {
            "request": [self.aon_request],
            "response": [self.aon_response],
        }
        return httpx.AsyncClient(event_hooks=hooks)

    def statuses(self, method: str, path: str) -> list[int]:
        return [s for m, p, s in self.answers if (m, p) == (method, path)]


def read(server: Server, path: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(server.base_url + path, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()

"""Final reports of several jobs of one group at once, on two uvicorn workers, both databases.

Each job's final report holds its own job's lock, not its siblings': the
group's statistics must still count every report exactly once (SPEC 12,
atomic increments), on PostgreSQL and on SQLite.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from app.store.migrate import upgrade_head
from tests.helpers import spec
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

JOBS = 6
CLIENTS = 18
ROUNDS = 6  # trials per client
MAX_EPOCHS = 5
SEED = 1313
GROUPED: dict[str, Any] = {
    "group": "shared", "max_epochs": MAX_EPOCHS, "batch_sizes": [8, 16, 32, 64],
    "default_batch_size": 32, "num_pruning_rounds": 0, "beta_knob": None, "mab_seed": None,
}  # fmt: skip


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, testrun_uid: str
) -> Iterator[Server]:
    """``bso serve --workers 2`` on a fresh, migrated database of each kind."""
    folder = tmp_path_factory.mktemp("group-concurrency")
    name = f"bso_gconc_{testrun_uid[:12]}_{worker_name()}"
    if request.param == "postgresql":
        url = fresh_postgres_database(name)
    else:
        url = f"sqlite+aiosqlite:///{folder / 'groups.db'}"
    upgrade_head(url)
    port = free_port()
    env = clean_env(BSO_DATABASE_URL=url, BSO_LOG_LEVEL="WARNING")
    args = bso_args("serve", "--workers", "2", "--host", "127.0.0.1", "--port", str(port))
    try:
        with running_server(
            args, port=port, env=env, log_dir=folder, cwd=folder, ready_path="/readyz"
        ) as running:
            yield running
    finally:
        if request.param == "postgresql":
            drop_postgres_database(name)


@pytest.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=2 * CLIENTS, max_keepalive_connections=2 * CLIENTS)
    async with httpx.AsyncClient(base_url=server.base_url, limits=limits, timeout=60) as client:
        yield client


@dataclass
class Expected:
    """What the clients were answered, per batch size: the group must count exactly this."""

    runs: defaultdict[int, int] = field(default_factory=lambda: defaultdict(int))
    exhausted: defaultdict[int, int] = field(default_factory=lambda: defaultdict(int))
    converged: defaultdict[int, int] = field(default_factory=lambda: defaultdict(int))
    epochs: defaultdict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    busy: int = 0


async def call(
    http: httpx.AsyncClient, expected: Expected, method: str, path: str, **kwargs: Any
) -> Any:
    """One request; a 503 (busy: its transaction rolled back) is retried, as SPEC 7 allows."""
    for _ in range(50):
        response = await http.request(method, path, **kwargs)
        if response.status_code != 503:
            assert response.status_code == 200, response.text
            return response.json()
        expected.busy += 1
        await asyncio.sleep(0.05)
    raise AssertionError(f"{method} {path}: busy 50 times")


async def one_client(http: httpx.AsyncClient, index: int, expected: Expected) -> None:
    rng = random.Random(SEED + index)
    job_id = f"shared-{index % JOBS}"
    for _ in range(ROUNDS):
        trial = await call(http, expected, "GET", "/jobs/batch_size", params={"job_id": job_id})
        converges = rng.random() < 0.7
        epoch = rng.randint(1, MAX_EPOCHS) if converges else MAX_EPOCHS
        body = {**trial, "time": 10.0 * epoch, "energy": 1000.0 * epoch,
                "metric": 0.95 if converges else 0.1, "current_epoch": epoch}  # fmt: skip
        answer = await call(http, expected, "POST", "/report", json=body)
        assert answer["stop_train"] is True and answer["converged"] is converges
        bs = trial["batch_size"]
        expected.runs[bs] += 1
        if converges:
            expected.converged[bs] += 1
            expected.epochs[bs].append(epoch)
        else:
            expected.exhausted[bs] += 1


async def test_final_reports_of_one_group_s_jobs_at_once_are_all_counted(
    http: httpx.AsyncClient,
) -> None:
    for j in range(JOBS):
        body = spec(job_id=f"shared-{j}", job_id_prefix="shared", gpu_model=f"GPU {j % 3}")
        registered = await http.post("/jobs", json={**body, **GROUPED})
        assert registered.status_code == 201, registered.text
    expected = Expected()
    await asyncio.gather(*(one_client(http, i, expected) for i in range(CLIENTS)))

    group = (await http.get("/groups/shared")).json()
    counted = {b["batch_size"]: b for b in group["batch_sizes"]}
    assert sum(b["runs"] for b in counted.values()) == CLIENTS * ROUNDS
    for bs, stats in counted.items():
        epochs = expected.epochs[bs]
        assert stats["runs"] == expected.runs[bs], (bs, stats)
        assert stats["exhausted"] == expected.exhausted[bs], (bs, stats)
        assert stats["converged"] == expected.converged[bs], (bs, stats)
        assert stats["min_epochs"] == (min(epochs) if epochs else None), (bs, stats)
        if epochs:
            assert stats["mean_epochs"] == pytest.approx(sum(epochs) / len(epochs))
    assert len(group["members"]) == JOBS
    assert sum(m["num_trials"] for m in group["members"]) == CLIENTS * ROUNDS
    assert len([bs for bs in counted if expected.runs[bs]]) >= 3  # the reports spread out

"""The real Zeus 0.16 BSO server as a process, its databases, and a recurring job to drive.

The server runs from its own venv (.venv-zeus, made by scripts/lib.sh
``ensure_zeus_venv`` from tests/zeus_server/requirements.txt): it needs
pydantic v1 and numpy < 2, which bso cannot share. Both servers are driven
with the same HTTP calls, Zeus's client's wire protocol.
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import httpx
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from tests.support.server import (
    REPO_ROOT,
    Server,
    bso_args,
    clean_env,
    free_port,
    running_server,
)

ZEUS_VENV = Path(os.environ.get("BSO_TEST_ZEUS_VENV", REPO_ROOT / ".venv-zeus"))
ZEUS_PYTHON = ZEUS_VENV / "bin" / "python"
RUN_ZEUS = REPO_ROOT / "tests" / "zeus_server" / "run.py"
MARIADB_ADMIN_URL = os.environ.get("BSO_TEST_MARIADB_URL", "mysql+aiomysql://root@127.0.0.1:3306/")


def require_zeus_venv() -> None:
    """Fail (not skip) with the way to make it, when the Zeus venv is missing."""
    if not ZEUS_PYTHON.exists():
        raise AssertionError(
            f"The Zeus 0.16 server's venv is missing ({ZEUS_VENV}). Make it with "
            "`bash -c '. scripts/lib.sh && ensure_zeus_venv'` (scripts/test.sh does)."
        )


def zeus_env(database_url: str) -> dict[str, str]:
    return clean_env(ZEUS_BSO_DATABASE_URL=database_url, ZEUS_BSO_LOG_LEVEL="WARN")


def create_zeus_schema(database_url: str) -> None:
    """Zeus's tables in an empty database (async-driver URL), as Zeus's deployment makes them."""
    require_zeus_venv()
    subprocess.run(
        [str(ZEUS_PYTHON), str(RUN_ZEUS), database_url],
        env=zeus_env(database_url), check=True, capture_output=True, timeout=120,
    )  # fmt: skip


@contextmanager
def running_zeus_server(database_url: str, log_dir: Path) -> Iterator[Server]:
    """Zeus's server under uvicorn on ``database_url`` (its schema made first)."""
    require_zeus_venv()
    port = free_port()
    # Zeus has no health route; its OpenAPI page answers once it serves.
    with running_server(
        [str(ZEUS_PYTHON), str(RUN_ZEUS), database_url, str(port)], port=port,
        env=zeus_env(database_url), log_dir=log_dir, ready_path="/docs", timeout=90.0,
        cwd=log_dir,
    ) as server:  # fmt: skip
        yield server


def import_zeus(source_url: str, *target_urls: str, args: Sequence[str] = ()) -> list[Imported]:
    """``bso import-zeus SOURCE_URL ARGS`` into each target at once, as an operator runs it."""
    runs = [
        subprocess.Popen(
            bso_args("import-zeus", source_url, *args),
            env=clean_env(BSO_DATABASE_URL=target),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for target in target_urls
    ]
    outputs = [run.communicate(timeout=120) for run in runs]
    return [Imported(run.returncode, *out) for run, out in zip(runs, outputs, strict=True)]


class Imported(NamedTuple):
    status: int
    stdout: str
    stderr: str


# ------------------------------------------------------------------ MariaDB


async def _mariadb_admin(statement: str) -> None:
    engine = create_async_engine(MARIADB_ADMIN_URL, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(statement)
    finally:
        await engine.dispose()


def _run_mariadb_admin(statement: str) -> None:
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _mariadb_admin(statement)).result()


def fresh_mariadb_database(name: str) -> str:
    """Drop and create an empty MariaDB database; returns its aiomysql URL."""
    _run_mariadb_admin(f"DROP DATABASE IF EXISTS `{name}`")
    _run_mariadb_admin(f"CREATE DATABASE `{name}`")
    return f"{MARIADB_ADMIN_URL.rstrip('/')}/{name}"


def drop_mariadb_database(name: str) -> None:
    _run_mariadb_admin(f"DROP DATABASE IF EXISTS `{name}`")


# ------------------------------------------------------------ a recurring job

SPEC: dict[str, Any] = {
    "job_id": "zeus-import-resnet",
    "job_id_prefix": "zeus-import",
    "batch_sizes": [8, 16, 32, 64],
    "default_batch_size": 32,
    "eta_knob": 0.5,
    "beta_knob": None,  # no early stop: every trial runs to convergence or max_epochs
    "target_metric": 0.9,
    "higher_is_better_metric": True,
    "max_epochs": 4,
    "num_pruning_rounds": 2,
    "window_size": 0,
    "mab_prior_mean": 0.0,
    "mab_prior_precision": 0.0,
    "mab_num_explorations": 2,
    "mab_seed": 20260,
    "max_power": 300.0,
    "number_of_gpus": 1,
    "gpu_model": "NVIDIA A40",
}
# Epochs to reach the target (64 never does), and seconds per epoch.
EPOCHS = {8: 2, 16: 2, 32: 2, 64: 99}
EPOCH_S = {8: 11.0, 16: 8.0, 32: 7.8, 64: 5.0}


def epoch_seconds(batch_size: int, recurrence: int) -> float:
    """Noisy enough that the bandit's samples, and so its choices, vary."""
    return EPOCH_S[batch_size] * (1.0 + 0.25 * math.sin(1.7 * recurrence + batch_size))


@dataclass(frozen=True)
class Dispatched:
    job_id: str
    batch_size: int
    trial_number: int

    def body(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "batch_size": self.batch_size,
            "trial_number": self.trial_number,
        }


async def register(http: httpx.AsyncClient, spec: dict[str, Any] = SPEC) -> None:
    response = await http.post("/jobs", json=spec)
    assert response.status_code in (200, 201), response.text


async def dispatch(http: httpx.AsyncClient, job_id: str = SPEC["job_id"]) -> Dispatched:
    response = await http.get("/jobs/batch_size", params={"job_id": job_id})
    assert response.status_code == 200, response.text
    return Dispatched(**response.json())


async def train(http: httpx.AsyncClient, trial: Dispatched, recurrence: int) -> None:
    """Report epochs until the server says stop, then end the trial (Zeus's client does)."""
    seconds = epoch_seconds(trial.batch_size, recurrence)
    for epoch in range(1, SPEC["max_epochs"] + 1):
        metric = 0.95 if epoch >= EPOCHS[trial.batch_size] else 0.5
        result = {**trial.body(), "time": seconds * epoch, "energy": 200.0 * seconds * epoch,
                  "metric": metric, "current_epoch": epoch}  # fmt: skip
        response = await http.post("/report", json=result)
        assert response.status_code == 200, response.text
        if response.json()["stop_train"]:
            break
    response = await http.patch("/trials", json=trial.body())
    assert response.status_code == 200, response.text


async def recurrences(
    http: httpx.AsyncClient, first: int, count: int, *, register_first: bool = True
) -> list[int]:
    """Run recurrences ``first .. first + count - 1``; the batch sizes chosen."""
    chosen = []
    for recurrence in range(first, first + count):
        if register_first:
            await register(http)  # Zeus's client registers at every start
        trial = await dispatch(http)
        await train(http, trial, recurrence)
        chosen.append(trial.batch_size)
    return chosen

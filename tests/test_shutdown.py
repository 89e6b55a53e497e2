"""Stopping and losing `bso serve` workers: SIGTERM under load, kill -9 on a busy host.

Real processes, as an orchestrator drives them: SIGTERM goes to the server's
main process only (a container's PID 1). Deadlines here are generous bounds
for "it happens", never speed targets: the machine is shared and loaded.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app import service, sweeper
from app.bandit import Lease
from app.cli.serve import WORKER_HEALTHCHECK_S, uvicorn_config
from app.config import Settings
from app.schemas import JobSpec
from app.store import trials
from app.store.engine import create_engine
from app.store.migrate import upgrade_head
from app.sweeper import sweeping
from tests.helpers import spec
from tests.support.server import (
    Server,
    bso_args,
    clean_env,
    drop_postgres_database,
    free_port,
    fresh_postgres_database,
    json_lines,
    running_server,
    worker_name,
    worker_processes,
)

IN_FLIGHT = 6
# Generous bounds on a shared 2-core machine: "it happened", not "it was fast".
REFUSED_WITHIN_S = 15
EXIT_WITHIN_S = 60
REPLACED_WITHIN_S = 90


@pytest.fixture
def database(testrun_uid: str) -> Iterator[tuple[str, str]]:
    name = f"bso_shut_{testrun_uid[:12]}_{worker_name()}"
    url = fresh_postgres_database(name)
    upgrade_head(url)
    yield name, url
    drop_postgres_database(name)


def serve_args(port: int) -> list[str]:
    return bso_args("serve", "--workers", "2", "--host", "127.0.0.1", "--port", str(port))


def workers_of(server: Server) -> set[int]:
    return worker_processes(server.process.pid)


async def waiting_on_locks(engine: AsyncEngine, database: str) -> int:
    async with engine.connect() as conn:
        found = await conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = :name AND wait_event_type = 'Lock'"
            ),
            {"name": database},
        )
        return int(found.scalar_one())


async def until(condition: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, f"not within {within} s: {what}"
        await asyncio.sleep(0.1)


async def new_connection_refused(base_url: str) -> bool:
    """True once connecting is refused.

    Until then a connection may still get in: answered 200, or, when it landed
    just as its worker stopped listening, closed unanswered (never a 5xx).
    """
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as fresh:
            response = await fresh.get("/healthz")
    except httpx.ConnectError:
        return True
    except httpx.TransportError:
        return False
    assert response.status_code == 200, response.text
    return False


async def test_sigterm_answers_requests_in_flight_refuses_new_ones_and_exits(
    database: tuple[str, str], tmp_path: Path
) -> None:
    name, url = database
    port = free_port()
    env = clean_env(
        BSO_DATABASE_URL=url,
        BSO_LOG_LEVEL="INFO",
        BSO_LOCK_TIMEOUT_MS="60000",  # the held job lock below must outlast the test's steps
        BSO_SHUTDOWN_TIMEOUT_S="40",
    )
    engine = create_engine(Settings(database_url=url))
    try:
        with running_server(serve_args(port), port=port, env=env, log_dir=tmp_path) as server:
            base = server.base_url
            job = spec(job_id="shut-1", job_id_prefix="shut", num_pruning_rounds=0)
            async with httpx.AsyncClient(base_url=base) as http:
                assert (await http.post("/jobs", json=job)).status_code == 201

            # A request holds the job's lock: dispatches of it wait in the database.
            async with engine.connect() as holder:
                await holder.execute(text("SELECT 1 FROM job WHERE job_id = 'shut-1' FOR UPDATE"))

                async def dispatch() -> httpx.Response:
                    async with httpx.AsyncClient(base_url=base, timeout=120) as own:
                        return await own.get("/jobs/batch_size", params={"job_id": "shut-1"})

                in_flight = [asyncio.create_task(dispatch()) for _ in range(IN_FLIGHT)]
                await until(
                    lambda: _equals(waiting_on_locks(engine, name), IN_FLIGHT),
                    REFUSED_WITHIN_S,
                    f"{IN_FLIGHT} dispatches waiting on the job's lock",
                )

                server.process.send_signal(signal.SIGTERM)  # the main process only, as kubelet
                stopped_at = time.monotonic()
                await until(lambda: new_connection_refused(base), REFUSED_WITHIN_S, "refused")
                assert server.process.poll() is None, "exited before answering its requests"
                await holder.rollback()  # the lock is released: the waiting requests go on

            answers = await asyncio.gather(*in_flight)
            assert [r.status_code for r in answers] == [200] * IN_FLIGHT, [r.text for r in answers]
            assert sorted(r.json()["trial_number"] for r in answers) == list(
                range(1, IN_FLIGHT + 1)
            )
            returncode = await asyncio.to_thread(server.process.wait, EXIT_WITHIN_S)
            print(f"exited {time.monotonic() - stopped_at:.1f} s after SIGTERM")
            assert returncode == 0, server.log()
            assert workers_of(server) == set()
            assert "Traceback" not in server.log(100_000), server.log()
    finally:
        await engine.dispose()


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def test_requests_that_outlast_the_shutdown_timeout_do_not_hold_the_exit(
    database: tuple[str, str], tmp_path: Path
) -> None:
    name, url = database
    port = free_port()
    env = clean_env(
        BSO_DATABASE_URL=url,
        BSO_LOG_LEVEL="WARNING",
        BSO_LOCK_TIMEOUT_MS="600000",
        BSO_SHUTDOWN_TIMEOUT_S="2",
    )
    engine = create_engine(Settings(database_url=url))
    try:
        with running_server(serve_args(port), port=port, env=env, log_dir=tmp_path) as server:
            base = server.base_url
            job = spec(job_id="shut-2", job_id_prefix="shut")
            async with engine.connect() as holder:
                async with httpx.AsyncClient(base_url=base, timeout=120) as http:
                    assert (await http.post("/jobs", json=job)).status_code == 201
                    await holder.execute(
                        text("SELECT 1 FROM job WHERE job_id = 'shut-2' FOR UPDATE")
                    )
                    stuck = asyncio.create_task(
                        http.get("/jobs/batch_size", params={"job_id": "shut-2"})
                    )
                    await until(
                        lambda: _equals(waiting_on_locks(engine, name), 1), 15, "one waiting"
                    )
                    server.process.send_signal(signal.SIGTERM)
                    # Exits while the lock is still held: the stuck request was cancelled.
                    returncode = await asyncio.to_thread(server.process.wait, EXIT_WITHIN_S)
                    assert returncode == 0, server.log()
                    with pytest.raises(httpx.TransportError):
                        await stuck  # closed without an answer: past the grace period
                await holder.rollback()
    finally:
        await engine.dispose()


# ------------------------------------------------------------- the lease sweep


async def test_the_lease_sweep_stops_between_batches_when_the_server_stops(
    database: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, url = database
    engine = create_engine(Settings(database_url=url))
    lease = Lease(1)  # sweeps every 0.25 s
    long_ago = service.utcnow() - timedelta(hours=1)
    jobs = 12
    for i in range(jobs):
        job = JobSpec.model_validate(spec(job_id=f"sweep-{i:02d}", job_id_prefix="sweep"))
        await service.register_job(engine, job, now=long_ago)
        await service.dispatch_trial(engine, job.job_id or "", now=long_ago, lease=lease)
    monkeypatch.setattr(sweeper, "SWEEP_BATCH", 4)

    # The shutdown comes while the first batch runs: that batch commits, no other starts.
    batches: list[int] = []
    in_batch, go_on = asyncio.Event(), asyncio.Event()
    expire = trials.expire_lapsed_trials

    async def one_batch(*args: Any, **kwargs: Any) -> Any:
        in_batch.set()
        await go_on.wait()
        batches.append(1)
        return await expire(*args, **kwargs)

    monkeypatch.setattr(trials, "expire_lapsed_trials", one_batch)
    try:
        async with sweeping(engine, lease):
            await asyncio.wait_for(in_batch.wait(), 30)
            # Runs once the exit below has asked the sweep to stop and waits for it.
            asyncio.get_running_loop().call_soon(go_on.set)
        async with engine.connect() as conn:
            statuses = await conn.execute(text("SELECT status, count(*) FROM trial GROUP BY 1"))
            assert {row[0]: row[1] for row in statuses} == {"Failed": 4, "Dispatched": jobs - 4}
        assert batches == [1]
    finally:
        await engine.dispose()


# ------------------------------------------------------- workers that come back


def serving_workers(server: Server) -> set[int]:
    """Workers that logged their startup and are still children of the server."""
    started = {
        line["pid"]
        for line in json_lines(server)
        if line.get("message") == "Application startup complete."
    }
    return started & workers_of(server)


def burn_cpu(count: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def wait_for(condition: Any, within: float, what: str, server: Server) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < within, f"not within {within} s: {what}\n{server.log()}"
        time.sleep(0.05)
    return time.monotonic() - started


def answers(server: Server) -> bool:
    try:
        return httpx.get(server.base_url + "/healthz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def imported(server: Server, module: str) -> int:
    """How many processes of the server imported ``module`` (-X importtime lines)."""
    log = server.log_path.read_text(errors="replace").splitlines()
    # "import time: self | cumulative | <module>", indented by its depth in the import chain.
    return sum(
        line.startswith("import time:") and line.rsplit("|", 1)[-1].strip() == module
        for line in log
    )


def test_killed_workers_are_replaced_on_a_cpu_loaded_host(tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(
        BSO_DATABASE_URL=f"sqlite:///{tmp_path}/bso.db",
        BSO_LOG_LEVEL="INFO",
        BSO_LOG_FORMAT="json",
        PYTHONPROFILEIMPORTTIME="1",  # every process lists its imports on stderr
    )
    with running_server(serve_args(port), port=port, env=env, log_dir=tmp_path) as server:
        wait_for(lambda: len(serving_workers(server)) == 2, 60, "two workers", server)
        burners = burn_cpu(2 * (os.cpu_count() or 2))
        kills = 0
        try:
            # One worker killed: the other serves, a replacement joins it.
            first, _ = sorted(serving_workers(server))
            os.kill(first, signal.SIGKILL)
            kills += 1
            one = wait_for(
                lambda: len(serving_workers(server) - {first}) == 2,
                REPLACED_WITHIN_S,
                "a replacement serving",
                server,
            )
            # Both killed: nothing serves until a replacement does.
            both = serving_workers(server)
            for pid in both:
                os.kill(pid, signal.SIGKILL)
                kills += 1
            back = wait_for(lambda: answers(server), REPLACED_WITHIN_S, "answering again", server)
            full = wait_for(
                lambda: len(serving_workers(server) - both) == 2,
                REPLACED_WITHIN_S,
                "two replacements serving",
                server,
            )
        finally:
            for burner in burners:
                burner.kill()
                burner.wait()
        print(
            f"with {len(burners)} CPU burners: one replaced in {one:.1f} s; after both were "
            f"killed, answering again in {back:.1f} s, both replaced in {back + full:.1f} s"
        )
        # Each killed worker was replaced once: no replacement was killed for
        # answering the supervisor's ping too late.
        died = [line for line in json_lines(server) if str(line.get("message")).endswith(" died")]
        assert len(died) == kills, [line["message"] for line in died]
        # Preloaded: the supervisor imported the app once (app.sweeper: only the app
        # imports it) and the CLI once; the five workers, its forks, imported neither.
        assert imported(server, "app.sweeper") == 1
        assert imported(server, "app.cli.main") == 1


def test_bso_serve_gives_starting_workers_and_received_requests_time() -> None:
    config = uvicorn_config(
        Settings(shutdown_timeout_s=7), host="127.0.0.1", port=free_port(), workers=2
    )
    assert config.timeout_worker_healthcheck == WORKER_HEALTHCHECK_S >= 10  # uvicorn's is 5
    assert config.timeout_graceful_shutdown == 7

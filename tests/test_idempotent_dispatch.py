"""A dispatch sent again with its Idempotency-Key makes one trial, from any worker or replica.

Real servers on one database, per backend: ``bso serve --workers 2`` and a
second replica (``bso serve``). The key lives in the database, so a repeat
answered by another worker or replica finds the trial the first try made;
concurrent repeats wait on the job's lock and find it too. Then a real lost
answer: a proxy (tests/support/answer_cut.py) resets the client's connection
once the server has answered a dispatch, and bso-client's retry, carrying the
same key, gets the same trial; without a key the same cut leaves two trials.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from bso_client import BatchSizeOptimizer, JobSpec
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from app.store.migrate import upgrade_head
from tests.client.conftest import FAST, CountingMeter
from tests.helpers import spec
from tests.support.answer_cut import AnswerCut
from tests.support.consistency import Acknowledged, check_consistency
from tests.support.server import (
    Server,
    bso_args,
    child_processes,
    clean_env,
    drop_postgres_database,
    free_port,
    fresh_postgres_database,
    running_server,
    worker_name,
    worker_processes,
)

REPEATS = 12


@dataclass
class Replicas:
    url: str
    two_workers: Server
    other: Server


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def replicas(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, testrun_uid: str
) -> Iterator[Replicas]:
    folder = tmp_path_factory.mktemp(f"idempotent-{request.param}")
    name = None
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{folder / 'bso.db'}"
    else:
        name = f"bso_idem_{testrun_uid[:12]}_{worker_name()}"
        url = fresh_postgres_database(name)
    upgrade_head(url)
    env = clean_env(BSO_DATABASE_URL=url, BSO_LOG_LEVEL="WARNING")
    try:
        port_a, port_b = free_port(), free_port()
        args_a = bso_args("serve", "--workers", "2", "--host", "127.0.0.1", "--port", str(port_a))
        args_b = bso_args("serve", "--host", "127.0.0.1", "--port", str(port_b))
        with (
            running_server(
                args_a, port=port_a, env=env, log_dir=folder, cwd=folder, ready_path="/readyz"
            ) as a,
            running_server(
                args_b, port=port_b, env=env, log_dir=folder, cwd=folder, ready_path="/readyz"
            ) as b,
        ):
            workers = worker_processes(a.process.pid)
            assert len(workers) == 2, child_processes(a.process.pid)
            yield Replicas(url, a, b)
    finally:
        if name is not None:
            drop_postgres_database(name)


def _job(server: Server, **overrides: Any) -> str:
    job_id = f"idem-{uuid.uuid4().hex[:8]}"
    body = spec(job_id=job_id, job_id_prefix="idem", **overrides)
    assert httpx.post(server.base_url + "/jobs", json=body).status_code == 201
    return job_id


def _dispatch(server: Server, job_id: str, key: str | None) -> dict[str, Any]:
    """One dispatch on a connection of its own, so that the server's workers share them."""
    headers = {} if key is None else {"Idempotency-Key": key}
    answer = httpx.get(
        server.base_url + "/jobs/batch_size", params={"job_id": job_id}, headers=headers,
        timeout=30,
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def _trials(server: Server, job_id: str) -> list[dict[str, Any]]:
    page = httpx.get(f"{server.base_url}/jobs/{job_id}/trials").json()
    items: list[dict[str, Any]] = page["items"]
    return items


def _consistent(url: str) -> None:
    """The consistency check (tests/support/consistency.py) on the servers' database."""

    async def check() -> None:
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            await check_consistency(engine, Acknowledged())
        finally:
            await engine.dispose()

    # On a thread of its own: asyncio.run would unset this thread's loop, pytest-asyncio's.
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, check()).result()


def test_repeats_on_other_workers_and_replicas_answer_one_trial(
    replicas: Replicas,
) -> None:
    a, b = replicas.two_workers, replicas.other
    job_id = _job(a)
    key = f'"{uuid.uuid4()}"'
    first = _dispatch(a, job_id, key)
    answers = [_dispatch(a if n % 3 else b, job_id, key) for n in range(REPEATS)]
    assert answers == [first] * REPEATS
    assert [t["trial_number"] for t in _trials(b, job_id)] == [first["trial_number"]]
    # Without a key (a Zeus client), every dispatch is a new trial, as before.
    unkeyed = [_dispatch(server, job_id, None)["trial_number"] for server in (a, b)]
    assert unkeyed == [2, 3]
    _consistent(replicas.url)


def test_concurrent_repeats_make_one_trial(replicas: Replicas) -> None:
    a, b = replicas.two_workers, replicas.other
    job_id = _job(a)
    key = str(uuid.uuid4())
    servers = [a, a, b] * 6
    with ThreadPoolExecutor(len(servers)) as pool:
        answers = list(pool.map(lambda s: _dispatch(s, job_id, key), servers))
    assert len({tuple(sorted(x.items())) for x in answers}) == 1, answers
    assert len(_trials(a, job_id)) == 1
    _consistent(replicas.url)


def _client(url: str, job_id: str) -> BatchSizeOptimizer:
    job = JobSpec(
        job_id=job_id, job_id_prefix="idem", batch_sizes=[16, 32, 64], default_batch_size=32,
        target_metric=0.9, max_epochs=5, mab_seed=7,
    )  # fmt: skip
    return BatchSizeOptimizer(job=job, url=url, energy=CountingMeter(), retry=FAST)


def test_a_lost_dispatch_answer_retried_by_the_client_makes_no_second_trial(
    replicas: Replicas,
) -> None:
    a = replicas.two_workers
    job_id = f"idem-{uuid.uuid4().hex[:8]}"
    with AnswerCut(int(a.base_url.rsplit(":", 1)[1])) as cut:
        bso = _client(cut.url, job_id)
        bso.register()
        cut.arm()
        with bso.trial() as trial:  # the first answer is lost; the retry gets the trial
            assert cut.cut == 1
            assert not trial.fallback and trial.trial_number == 1
            (stored,) = _trials(a, job_id)
            assert (stored["trial_number"], stored["status"]) == (1, "Dispatched")
            assert stored["batch_size"] == trial.batch_size
            decision = trial.report(metric=0.95)
            assert decision.stop and decision.converged
        # The same cut without a key: the retry cannot be told apart, a second trial.
        cut.arm()
        with pytest.raises(httpx.TransportError):
            httpx.get(cut.url + "/jobs/batch_size", params={"job_id": job_id})
        assert cut.cut == 2
        assert _dispatch(a, job_id, None)["trial_number"] == 3
    assert [t["status"] for t in _trials(a, job_id)] == ["Succeeded", "Dispatched", "Dispatched"]
    _consistent(replicas.url)

"""Training never fails because the optimizer is away: fallback, retries, and errors.

A real ``bso serve`` is stopped before and during trials; a real 503 comes from
a PostgreSQL job row that another transaction holds locked.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest
from bso_client import (
    BatchSizeOptimizer,
    BSOUnavailableError,
    Retry,
    UnavailableWarning,
)
from sqlalchemy.engine import make_url

from tests.client.conftest import FAST, CountingMeter, Recorder, database, read, serve, spec
from tests.support.server import drop_postgres_database, free_port


def nowhere() -> str:
    """A URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


def train_to_the_end(bso: BatchSizeOptimizer) -> tuple[int, int, list[bool]]:
    """A training loop that obeys stop: (batch size, epochs trained, fallback flags)."""
    with bso.trial() as trial:
        flags = []
        for epoch in range(1, trial.max_epochs + 1):
            decision = trial.report(metric=0.1 * epoch)
            flags.append(decision.fallback)
            if decision.stop:
                break
        return trial.batch_size, trial.epoch, flags


def test_server_down_before_the_trial_trains_with_the_default(job_id: str) -> None:
    bso = BatchSizeOptimizer(job=spec(job_id), url=nowhere(), energy=CountingMeter(), retry=FAST)
    with pytest.warns(UnavailableWarning) as caught:
        first = train_to_the_end(bso)
        second = train_to_the_end(bso)
    assert first == second == (32, 5, [True] * 5)  # the default, every epoch, never stopped
    assert len(caught) == 1, [str(w.message) for w in caught]  # said once
    message = str(caught[0].message)
    assert "default batch size 32" in message and "Connection refused" in message
    with bso.trial() as trial:
        assert trial.fallback and trial.trial_number is None


def test_on_unavailable_raise_raises(job_id: str) -> None:
    bso = BatchSizeOptimizer(
        job=spec(job_id), url=nowhere(), energy=CountingMeter(), retry=FAST, on_unavailable="raise"
    )
    with pytest.raises(BSOUnavailableError, match=r"POST /jobs: cannot reach the server"):
        bso.trial()


def test_a_slow_server_times_out_into_the_fallback(job_id: str) -> None:
    """A server that accepts but never answers: each attempt times out."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        bso = BatchSizeOptimizer(
            job=spec(job_id), url=url, energy=CountingMeter(), timeout=0.2, retry=FAST
        )
        started = time.monotonic()
        with pytest.warns(UnavailableWarning, match="ReadTimeout"), bso.trial() as trial:
            assert trial.fallback and trial.batch_size == 32
        # POST /jobs with a job_id is retried: 3 attempts of 0.2 s, plus short waits.
        assert 0.6 <= time.monotonic() - started < 3


@pytest.fixture
def own_server(backend: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A fresh database of the backend, for a server the test starts and stops itself."""
    url, pg_name = database(backend, tmp_path, "restart")
    yield url, tmp_path
    if pg_name is not None:
        drop_postgres_database(pg_name)


def test_server_stopped_during_a_trial_back_and_gone_again(
    own_server: tuple[str, Path], job_id: str, spool: Path
) -> None:
    """Reports fall back while the server is away, reach it when it is back; training completes."""
    url, folder = own_server
    port = free_port()
    meter = CountingMeter()
    with serve(url, folder, port=port) as server:
        bso = BatchSizeOptimizer(
            job=spec(job_id, max_epochs=6), url=server.base_url, energy=meter, retry=FAST
        )
        trial = bso.trial()
        meter.work(100)
        assert not trial.report(metric=0.1).fallback
    # The server is gone: training goes on, nothing says stop, one warning.
    with pytest.warns(UnavailableWarning) as caught:
        for epoch in (2, 3):
            meter.work(100)
            decision = trial.report(metric=0.1 * epoch)
            assert decision.fallback and not decision.stop
    assert len(caught) == 1 and "training goes on" in str(caught[0].message)
    # It comes back on the same database: the next report reaches it again.
    with serve(url, folder, port=port) as server:
        meter.work(100)
        decision = trial.report(metric=0.4)
        assert not decision.stop and not decision.fallback
        reported = read(server, f"/jobs/{job_id}/trials")["items"][0]
        assert reported["status"] == "Dispatched" and reported["batch_size"] == trial.batch_size
    # Gone for good: the run trains to max_epochs (the client stops it there, its target
    # not reached) and leaves the block quietly: the report warning was given already.
    with warnings.catch_warnings(record=True) as later:
        warnings.simplefilter("always")
        with trial:
            meter.work(100)
            assert not trial.report(metric=0.5).stop
            meter.work(100)
            last = trial.report(metric=0.6)
            assert last.stop and not last.converged and last.fallback
            assert "max_epochs (6)" in last.message
    assert trial.epoch == 6 and trial.batch_size == 32
    assert [w for w in later if issubclass(w.category, UnavailableWarning)] == []
    # Reports 5 and 6 and the trial's end wait in the spool for the server.
    kept = [json.loads(line) for line in next(spool.glob("*.jsonl")).read_text().splitlines()]
    assert [(k["kind"], k["body"].get("current_epoch")) for k in kept] == [
        ("report", 5),
        ("report", 6),
        ("end", None),
    ]


@contextmanager
def job_row_locked(postgres_url: str, job_id: str) -> Iterator[threading.Event]:
    """Hold the job row's lock in another transaction until the event is set."""
    release, locked = threading.Event(), threading.Event()
    dsn = make_url(postgres_url).set(drivername="postgresql").render_as_string(False)

    async def hold() -> None:
        connection = await asyncpg.connect(dsn)
        try:
            async with connection.transaction():
                await connection.execute("SELECT 1 FROM job WHERE job_id = $1 FOR UPDATE", job_id)
                locked.set()
                await asyncio.to_thread(release.wait, 30)
        finally:
            await connection.close()

    holder = threading.Thread(target=asyncio.run, args=(hold(),))
    holder.start()
    assert locked.wait(10), "could not lock the job row"
    try:
        yield release
    finally:
        release.set()
        holder.join(10)


def test_a_real_503_is_retried_after_retry_after(tmp_path: Path, job_id: str) -> None:
    """The job's row is locked: GET /jobs/batch_size and the final report answer 503, then 200."""
    url, pg_name = database("postgresql", tmp_path, "busy")
    recorder = Recorder()
    try:
        with (
            serve(url, tmp_path, settings={"BSO_LOCK_TIMEOUT_MS": "100"}) as server,
            recorder.client() as http,
        ):
            bso = BatchSizeOptimizer(
                job=spec(job_id),
                url=server.base_url,
                energy=CountingMeter(),
                retry=Retry(attempts=4, backoff=0.01, max_retry_after=2.0),
                http_client=http,
            )
            bso.register()
            with job_row_locked(url, job_id) as release:
                threading.Timer(0.5, release.set).start()
                started = time.monotonic()
                trial = bso.trial()  # a dispatch is retried on 503: it was rolled back
                waited = time.monotonic() - started
            assert not trial.fallback and trial.trial_number == 1
            assert recorder.statuses("GET", "/jobs/batch_size")[:1] == [503]
            assert recorder.statuses("GET", "/jobs/batch_size")[-1] == 200
            assert waited >= 1.0  # the server's Retry-After: 1, not the 0.01 s backoff
            with job_row_locked(url, job_id) as release:
                threading.Timer(0.5, release.set).start()
                decision = trial.report(metric=0.95)  # a final report takes the lock
            assert decision.stop and decision.converged and not decision.fallback
            assert recorder.statuses("POST", "/report")[0] == 503
            assert recorder.statuses("POST", "/report")[-1] == 200
            trial.end()
    finally:
        assert pg_name is not None
        drop_postgres_database(pg_name)


def test_a_dispatch_answered_too_late_is_sent_again_and_makes_one_trial(
    tmp_path: Path, job_id: str
) -> None:
    """A dispatch whose answer does not come in time is sent again with the same key.

    The server waits up to 30 s for the locked row (BSO_LOCK_TIMEOUT_MS) and the
    client 1 s per call: every try gives up long before any answer. Once the row
    is free the server runs the tries it received, one at a time under the
    job's lock: the first makes the trial, the others answer it (SPEC 3).
    """
    url, pg_name = database("postgresql", tmp_path, "impatient")
    impatient = Recorder()
    try:
        with (
            serve(url, tmp_path, settings={"BSO_LOCK_TIMEOUT_MS": "30000"}) as server,
            impatient.client() as http,
        ):
            quick = BatchSizeOptimizer(
                job=spec(job_id), url=server.base_url, energy=CountingMeter(),
                timeout=1.0, retry=FAST, http_client=http,
            )  # fmt: skip
            quick.register()
            with job_row_locked(url, job_id), pytest.warns(UnavailableWarning, match="Timeout"):
                fallback = quick.trial()
            assert fallback.fallback and fallback.batch_size == 32
            dispatches = [r for r in impatient.requests if r.url.path == "/jobs/batch_size"]
            assert len(dispatches) == FAST.attempts
            (key,) = {r.headers["Idempotency-Key"] for r in dispatches}
            # The same key once more, after the tries the server queued: their one trial.
            again = httpx.get(
                server.base_url + "/jobs/batch_size", params={"job_id": job_id},
                headers={"Idempotency-Key": key}, timeout=30,
            )  # fmt: skip
            assert again.json()["trial_number"] == 1, again.text
            assert [t["trial_number"] for t in read(server, f"/jobs/{job_id}/trials")["items"]] == [
                1
            ]
    finally:
        assert pg_name is not None
        drop_postgres_database(pg_name)

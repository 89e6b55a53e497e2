"""client/README.md's failure table, row by row, against real faults of a real ``bso serve``.

Wrong URLs (scheme, path, port), a server killed mid-run (never back, or back
on the same database), reports kept on disk and delivered at the next start,
a job deleted mid-run, kept reports past their trial's lease, and a token
revoked mid-run. Each row of the table names its test here (or in
test_auth.py, test_lifecycle.py, test_recurrences.py, test_unavailable.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from bso_client import (
    AsyncBatchSizeOptimizer,
    BatchSizeOptimizer,
    BSORejectedError,
    RejectedWarning,
    Trial,
    UnavailableWarning,
)
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from tests.client.conftest import FAST, CountingMeter, database, read, serve, served_database, spec
from tests.support.consistency import check_consistency
from tests.support.server import (
    Server,
    bso_args,
    create_tokens,
    drop_postgres_database,
    free_port,
    run_off_loop,
)


def kill(server: Server) -> None:
    """SIGKILL the server's process group: no shutdown, no goodbye."""
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(10)


def kept(spool: Path) -> list[tuple[str, int | None]]:
    """What the spool holds: (kind, epoch) of every record, in order."""
    records = []
    for path in sorted(spool.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            data = json.loads(line)
            records.append((data["kind"], data["body"].get("current_epoch")))
    return records


def train(trial: Trial, meter: CountingMeter, *, reaches_at: int) -> None:
    """Train until told to stop: 100 J an epoch, the target 0.9 reached at ``reaches_at``."""
    for epoch in range(1, trial.max_epochs + 1):
        meter.work(100.0)
        if trial.report(metric=0.95 if epoch >= reaches_at else 0.5).stop:
            break


@pytest.fixture
def own_database(backend: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    url, pg_name = database(backend, tmp_path, "faults")
    yield url, tmp_path
    if pg_name is not None:
        drop_postgres_database(pg_name)


def consistent(url: str) -> None:
    """tests/support's consistency check of every job in the database."""

    async def check() -> None:
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            await check_consistency(engine)
        finally:
            await engine.dispose()

    run_off_loop(check())


# ------------------------------------------------------------------ wrong URLs


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "localhost:8000/", "ftp://host:8000", "http://"])
def test_a_url_without_a_scheme_is_a_value_error(
    url: str, job_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        BatchSizeOptimizer(job=spec(job_id), url=url, energy=CountingMeter())
    with pytest.raises(ValueError, match="http:// or https://"):
        AsyncBatchSizeOptimizer(job=spec(job_id), url=url, energy=CountingMeter())
    monkeypatch.setenv("BSO_URL", url)
    with pytest.raises(ValueError, match="http://"):
        BatchSizeOptimizer(job=spec(job_id), energy=CountingMeter())


def test_a_wrong_path_says_bso_url_is_not_a_bso_server(server: Server, job_id: str) -> None:
    host = server.base_url.removeprefix("http://")
    bso = BatchSizeOptimizer(
        job=spec(job_id), url=f"http://me:s3cret@{host}/api", energy=CountingMeter()
    )
    with pytest.raises(BSORejectedError) as refused:
        for _trial in bso.trials():
            pass
    error = refused.value
    assert error.status_code == 404
    assert error.url == f"http://***@{host}/api/jobs"
    assert f"POST http://***@{host}/api/jobs: 404" in str(error)
    assert "BSO_URL (or url=) does not point at a bso server" in str(error)
    assert "s3cret" not in str(error)
    assert bso.last is not None and bso.last.reason == "exception"


def test_a_wrong_port_trains_at_the_default_and_stops_at_the_target(job_id: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    meter = CountingMeter()
    bso = BatchSizeOptimizer(job=spec(job_id), url=url, energy=meter, retry=FAST)
    with pytest.warns(UnavailableWarning) as caught:
        for trial in bso.trials():
            with trial:
                train(trial, meter, reaches_at=2)
    assert len(caught) == 1
    assert f"cannot reach the server at {url}" in str(caught[0].message)
    last = bso.last
    assert last is not None and last.reason == "converged" and len(last.tries) == 1
    assert last.tries[0].fallback and last.tries[0].epoch == 2  # not max_epochs (5)
    # Nothing on any server: the fallback run has no trial to report later.
    assert kept(Path(os.environ["BSO_SPOOL_DIR"])) == []


# ----------------------------------------------------------- the server away


def test_server_killed_mid_run_the_run_stops_at_its_target(
    own_database: tuple[str, Path], job_id: str, spool: Path
) -> None:
    url, folder = own_database
    meter = CountingMeter()
    with serve(url, folder) as server:
        bso = BatchSizeOptimizer(
            job=spec(job_id, max_epochs=15), url=server.base_url, energy=meter, retry=FAST
        )
        trial = bso.trial()
        meter.work(100.0)
        assert not trial.report(metric=0.5).fallback
        kill(server)
        with pytest.warns(UnavailableWarning, match="keeps its reports") as caught, trial:
            for epoch in range(2, trial.max_epochs + 1):
                meter.work(100.0)
                decision = trial.report(metric=0.95 if epoch >= 7 else 0.5)
                if decision.stop:
                    break
    assert len(caught) == 1
    assert trial.epoch == 7  # the target's epoch, not max_epochs (15)
    assert decision.stop and decision.converged and decision.fallback
    assert "reached target_metric 0.9 at epoch 7" in decision.message
    assert kept(spool) == [("report", e) for e in range(2, 8)] + [("end", None)]


def test_server_killed_and_restarted_mid_run_gets_the_kept_reports(
    own_database: tuple[str, Path], job_id: str, spool: Path
) -> None:
    url, folder = own_database
    port = free_port()
    meter = CountingMeter()
    with serve(url, folder, port=port) as server:
        bso = BatchSizeOptimizer(
            job=spec(job_id, max_epochs=15), url=server.base_url, energy=meter, retry=FAST
        )
        trial = bso.trial()
        meter.work(100.0)
        trial.report(metric=0.5)
        kill(server)
    with pytest.warns(UnavailableWarning):
        for _ in (2, 3):
            meter.work(100.0)
            assert trial.report(metric=0.5).fallback
    assert kept(spool) == [("report", 2), ("report", 3)]
    with serve(url, folder, port=port) as server:
        with trial:
            for epoch in (4, 5, 6):
                meter.work(100.0)
                decision = trial.report(metric=0.95 if epoch == 6 else 0.5)
                assert not decision.fallback  # the server's own answers again
                if decision.stop:
                    break
        assert decision.stop and decision.converged and trial.epoch == 6
        assert kept(spool) == []
        (done,) = read(server, f"/jobs/{job_id}/trials")["items"]
        assert (done["status"], done["converged"], done["energy"]) == ("Succeeded", True, 600.0)
    consistent(url)


def test_reports_kept_while_away_are_delivered_at_the_next_start(
    own_database: tuple[str, Path], job_id: str, spool: Path
) -> None:
    url, folder = own_database
    port = free_port()
    meter = CountingMeter()
    with serve(url, folder, port=port) as server:
        bso = BatchSizeOptimizer(job=spec(job_id), url=server.base_url, energy=meter, retry=FAST)
        trial = bso.trial()
        kill(server)
    with pytest.warns(UnavailableWarning), trial:
        train(trial, meter, reaches_at=3)
    assert trial.epoch == 3 and kept(spool) == [("report", 1), ("report", 2), ("report", 3),
                                                ("end", None)]  # fmt: skip
    # The next start of the job, in a process of its own, on the same machine.
    with serve(url, folder, port=port) as server:
        script = (
            "from bso_client import BatchSizeOptimizer, JobSpec\n"
            f"job = JobSpec(job_id={job_id!r}, job_id_prefix='client', batch_sizes=[16, 32, 64],"
            " default_batch_size=32, target_metric=0.9, max_epochs=5, mab_seed=7,"
            " gpu_model='NVIDIA A40', number_of_gpus=2, max_power=600.0)\n"
            f"bso = BatchSizeOptimizer(job=job, url={server.base_url!r}, energy='none')\n"
            "with bso.trial() as trial:\n"
            "    print(trial.trial_number, trial.batch_size)\n"
        )
        env = {**os.environ, "BSO_SPOOL_DIR": str(spool)}
        done = subprocess.run(
            [str(Path(bso_args()[0]).parent / "python"), "-c", script],
            env=env, capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        assert done.stdout.split() == ["2", "16"]  # trial 1 converged at 32: next, 16
        trials = read(server, f"/jobs/{job_id}/trials")["items"]
        assert [(t["status"], t["converged"]) for t in trials[:1]] == [("Succeeded", True)]
        assert trials[0]["energy"] == 300.0
    assert kept(spool) == []
    consistent(url)


def test_kept_reports_past_their_lease_are_dropped_with_one_warning(
    own_database: tuple[str, Path], job_id: str, spool: Path
) -> None:
    url, folder = own_database
    port = free_port()
    meter = CountingMeter()
    lease = {"BSO_TRIAL_LEASE_S": "1"}
    with serve(url, folder, port=port, settings=lease) as server:
        bso = BatchSizeOptimizer(job=spec(job_id), url=server.base_url, energy=meter, retry=FAST)
        trial = bso.trial()
        kill(server)
    with pytest.warns(UnavailableWarning), trial:
        for _ in range(2):
            meter.work(100.0)
            trial.report(metric=0.5)
    assert kept(spool) == [("report", 1), ("report", 2), ("end", None)]
    with serve(url, folder, port=port, settings=lease) as server:
        deadline = time.monotonic() + 20
        while read(server, f"/jobs/{job_id}/trials")["items"][0]["status"] == "Dispatched":
            assert time.monotonic() < deadline, "the lease sweep never expired the trial"
            time.sleep(0.2)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with bso.trial() as again:
                pass
        said = [str(w.message) for w in caught if w.category is UnavailableWarning]
        assert len(said) == 1, said
        assert said[0].startswith("3 kept report(s) and end(s) were dropped"), said
        assert again.trial_number == 2
    assert kept(spool) == []


def test_a_job_deleted_mid_run_warns_once_and_training_goes_on(
    server: Server, job_id: str, spool: Path
) -> None:
    meter = CountingMeter()
    bso = BatchSizeOptimizer(job=spec(job_id), url=server.base_url, energy=meter)
    with pytest.warns(RejectedWarning) as caught, bso.trial() as trial:
        meter.work(100.0)
        trial.report(metric=0.5)
        deleted = httpx.delete(server.base_url + "/jobs", params={"job_id": job_id})
        assert deleted.status_code == 200
        for epoch in range(2, trial.max_epochs + 1):
            meter.work(100.0)
            if trial.report(metric=0.95 if epoch >= 4 else 0.5).stop:
                break
    assert trial.epoch == 4 and trial.decision is not None and trial.decision.converged
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert "POST" in message and "/report: 404" in message and "no longer holds" in message
    assert kept(spool) == []  # the server will never take them


def _delete_job(server: Server, job_id: str) -> None:
    deleted = httpx.delete(server.base_url + "/jobs", params={"job_id": job_id})
    assert deleted.status_code == 200, deleted.text


def test_a_job_deleted_between_recurrences_is_registered_again_and_starts_over(
    server: Server, job_id: str
) -> None:
    meter = CountingMeter()
    bso = BatchSizeOptimizer(job=spec(job_id), url=server.base_url, energy=meter)
    for _ in range(2):
        with bso.trial() as trial:
            meter.work(100.0)
            trial.report(metric=0.95)
    assert trial.trial_number == 2
    _delete_job(server, job_id)  # an operator resets the job while the process lives
    with pytest.warns(RejectedWarning) as caught, bso.trial() as again:
        meter.work(100.0)
        again.report(metric=0.95)
    assert len(caught) == 1, [str(w.message) for w in caught]
    assert f"job {job_id} is gone" in str(caught[0].message)
    assert not again.fallback and again.trial_number == 1  # the job's first trial, again
    assert again.batch_size == 32  # pruning starts over at the default
    assert [t["trial_number"] for t in read(server, f"/jobs/{job_id}/trials")["items"]] == [1]


async def test_the_async_client_registers_a_deleted_job_again(server: Server, job_id: str) -> None:
    meter = CountingMeter()
    bso = AsyncBatchSizeOptimizer(job=spec(job_id), url=server.base_url, energy=meter)
    async with bso.trial() as trial:
        meter.work(100.0)
        await trial.report(metric=0.95)
    _delete_job(server, job_id)  # a blocking call: the server is another process
    with pytest.warns(RejectedWarning, match=f"job {job_id} is gone"):
        async with bso.trial() as again:
            meter.work(100.0)
            await again.report(metric=0.95)
    assert not again.fallback and again.trial_number == 1


# ------------------------------------------------------------ a revoked token


@pytest.fixture(scope="module")
def auth_server(
    backend: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, dict[str, str], dict[str, str]]]:
    folder = tmp_path_factory.mktemp(f"client-revoke-{backend}")
    settings = {"BSO_AUTH": "required", "BSO_AUTH_CACHE_S": "0"}
    with served_database(backend, folder, "revoke", **settings) as (server, url):
        env = {"BSO_DATABASE_URL": url, "BSO_AUTH": "required", "PATH": "/usr/bin:/bin"}
        made = create_tokens(
            env,
            folder,
            nightly=["--role", "trainer", "--prefix", "client"],
            spare=["--role", "trainer", "--prefix", "client"],
            viewer=["--role", "viewer"],
        )
        yield server, made, env


def test_a_token_revoked_mid_run_warns_once_and_the_trial_ends_later(
    auth_server: tuple[Server, dict[str, str], dict[str, str]], job_id: str, spool: Path
) -> None:
    server, made, env = auth_server
    meter = CountingMeter()
    bso = BatchSizeOptimizer(
        job=spec(job_id), url=server.base_url, token=made["nightly"], energy=meter
    )
    with pytest.warns(RejectedWarning) as caught, bso.trial() as trial:
        meter.work(100.0)
        assert not trial.report(metric=0.5).fallback
        subprocess.run(
            bso_args("tokens", "revoke", "nightly"), env=env, cwd=spool.parent,
            capture_output=True, check=True, timeout=60,
        )  # fmt: skip
        for epoch in range(2, trial.max_epochs + 1):
            meter.work(100.0)
            decision = trial.report(metric=0.95 if epoch >= 3 else 0.5)
            if decision.stop:
                break
    # Training completed: stopped at its target by the client, one warning with the fix.
    assert trial.epoch == 3 and decision.converged and decision.fallback
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert "401" in message and "revoked" in message and "BSO_TOKEN" in message
    assert kept(spool) == [("report", 2), ("report", 3), ("end", None)]
    trials = read(server, f"/jobs/{job_id}/trials", token=made["viewer"])["items"]
    assert [t["status"] for t in trials] == ["Dispatched"]
    # A valid token returns: the next start sends the kept reports; the trial ends there.
    again = BatchSizeOptimizer(
        job=spec(job_id), url=server.base_url, token=made["spare"], energy=meter
    )
    with again.trial() as next_trial:
        assert next_trial.trial_number == 2
    trials = read(server, f"/jobs/{job_id}/trials", token=made["viewer"])["items"]
    assert [(t["status"], t["converged"], t["energy"]) for t in trials[:1]] == [
        ("Succeeded", True, 300.0)
    ]
    assert kept(spool) == []

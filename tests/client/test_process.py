"""What happens around the trial: the interpreter's exit, ranks, the HTTP rules."""

from __future__ import annotations

import email.utils
import subprocess
import sys
import textwrap
import time

import httpx
import pytest
from bso_client import BatchSizeOptimizer, Retry
from bso_client.distributed import broadcast, rank
from bso_client.http import redact, retry_after_seconds

from tests.client.conftest import CountingMeter, read, spec
from tests.support.server import Server, clean_env


def test_a_script_that_exits_inside_a_trial_ends_it(server: Server, job_id: str) -> None:
    """No ``with`` block and ``sys.exit``: the atexit hook sends PATCH /trials."""
    script = textwrap.dedent(f"""
        import sys, warnings
        from bso_client import BatchSizeOptimizer, JobSpec
        warnings.simplefilter("ignore")
        job = JobSpec(job_id={job_id!r}, job_id_prefix="client", batch_sizes=[16, 32],
                      default_batch_size=32)
        trial = BatchSizeOptimizer(job=job, url={server.base_url!r}, energy="none").trial()
        trial.report(metric=0.1)
        sys.exit(3)
    """)
    done = subprocess.run([sys.executable, "-c", script], env=clean_env(), timeout=60,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 3, done.stderr
    trials = read(server, f"/jobs/{job_id}/trials")["items"]
    assert [(t["status"], t["failure_reason"]) for t in trials] == [("Failed", "Ended")]


def test_only_rank_0_talks_to_the_server(
    server: Server, job_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANK", "1")
    assert rank() == 1
    assert broadcast(64) == 64  # no process group: the value itself
    follower = BatchSizeOptimizer(job=spec(job_id), url=server.base_url, energy=CountingMeter())
    with follower.trial() as trial:
        assert not trial.leader and trial.batch_size == 32 and trial.trial_number is None
        decision = trial.report(metric=0.99)
        assert not decision.stop and "rank 0" in decision.message
    # It did not even register the job.
    assert httpx.get(f"{server.base_url}/jobs/{job_id}").status_code == 404
    leader = BatchSizeOptimizer(
        job=spec(job_id), url=server.base_url, energy=CountingMeter(), rank=0
    )
    with leader.trial() as trial:
        assert trial.leader and trial.trial_number == 1


def test_retry_after_and_backoff() -> None:
    assert retry_after_seconds("1") == 1.0
    assert retry_after_seconds(" 2.5 ") == 2.5
    assert retry_after_seconds("-3") == 0.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= (retry_after_seconds(later) or 0) <= 30
    retry = Retry(attempts=5, backoff=0.5, max_backoff=2.0, max_retry_after=10.0)
    assert retry.delay(0, 120.0) == 10.0  # the server's wait, capped
    for attempt, ceiling in [(0, 0.5), (1, 1.0), (2, 2.0), (6, 2.0)]:
        assert ceiling / 2 <= retry.delay(attempt, None) <= ceiling
    with pytest.raises(ValueError, match="at least 1"):
        Retry(attempts=0)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("http://u:bso_abc_secret@bso.example:8000/x", "http://***@bso.example:8000/x"),
        ("https://bso_abc_secret@bso.example", "https://***@bso.example"),
        ("http://u:pw@[::1]:8000", "http://***@[::1]:8000"),
    ],
)
def test_urls_are_shown_without_credentials(url: str, shown: str) -> None:
    assert redact(url) == shown

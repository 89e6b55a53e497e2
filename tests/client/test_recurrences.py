"""``bso.trials()``: a recurrence tries again until a run reaches its target, against ``bso serve``.

The batch sizes behave as in test_lifecycle.py: 32 reaches the target 0.9 at
epoch 2, 64 at epoch 3, 16 never (and costs 150 J an epoch, so the service
stops it for its cost once beta x the cheapest run is spent).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from bso_client import (
    AsyncBatchSizeOptimizer,
    BatchSizeOptimizer,
    JobSpec,
    RejectedWarning,
    Trial,
)

from tests.client.conftest import CountingMeter, read, spec
from tests.client.test_lifecycle import accuracy
from tests.support.server import Server


def train(trial: Trial, meter: CountingMeter) -> None:
    """An ordinary loop: 100 J an epoch (150 J with 16), the metric of its batch size."""
    for epoch in range(1, trial.max_epochs + 1):
        meter.work(150.0 if trial.batch_size == 16 else 100.0)
        if trial.report(metric=accuracy(trial.batch_size, epoch)).stop:
            break


def recurrence(bso: BatchSizeOptimizer, meter: CountingMeter, max_tries: int = 20) -> list[int]:
    """The README's form; the batch size of every try."""
    for trial in bso.trials(max_tries=max_tries):
        with trial:
            train(trial, meter)
    assert bso.last is not None
    return [t.batch_size for t in bso.last.tries]


def test_a_run_stopped_for_cost_is_tried_again_until_one_converges(
    server: Server, job_id: str
) -> None:
    meter = CountingMeter()
    bso = BatchSizeOptimizer(job=spec(job_id), url=server.base_url, energy=meter)
    assert recurrence(bso, meter) == [32]
    assert bso.last is not None and bso.last.converged and bso.last.reason == "converged"
    # The pruning walk goes down to 16, which the service stops for its cost
    # (450 J > beta 2 x 200 J): the same recurrence goes on with 64, which converges.
    assert recurrence(bso, meter) == [16, 64]
    last = bso.last
    assert last is not None and last.reason == "converged" and last.trial is not None
    assert last.trial.batch_size == 64 and last.trial.decision is not None
    assert last.trial.decision.converged
    first = last.tries[0].decision
    assert first is not None and first.stop and not first.converged and "exceeded" in first.message
    # Every try's cost counts: 450 J at 16 and 300 J at 64, as the server priced them.
    trials = read(server, f"/jobs/{job_id}/trials")["items"]
    assert [(t["batch_size"], t["status"], t["converged"]) for t in trials] == [
        (32, "Succeeded", True),
        (16, "Succeeded", False),
        (64, "Succeeded", True),
    ]
    assert last.cost == pytest.approx(trials[1]["cost"] + trials[2]["cost"])


def test_max_tries_ends_a_recurrence_that_never_converges(server: Server, job_id: str) -> None:
    meter = CountingMeter()
    bso = BatchSizeOptimizer(job=spec(job_id), url=server.base_url, energy=meter)
    recurrence(bso, meter)  # 32 converges: the cheapest so far
    assert recurrence(bso, meter, max_tries=1) == [16]
    assert bso.last is not None and bso.last.reason == "max_tries" and not bso.last.converged


def test_an_exception_in_a_try_ends_the_recurrence(server: Server, job_id: str) -> None:
    bso = BatchSizeOptimizer(job=spec(job_id), url=server.base_url, energy=CountingMeter())
    with pytest.raises(RuntimeError, match="loader"):
        for trial in bso.trials():
            with trial:
                trial.report(metric=0.1)
                raise RuntimeError("loader crashed")
    assert bso.last is not None and bso.last.reason == "exception" and len(bso.last.tries) == 1
    trials = read(server, f"/jobs/{job_id}/trials")["items"]
    assert [(t["status"], t["failure_reason"]) for t in trials] == [("Failed", "Ended")]


def test_a_try_left_without_a_with_block_is_ended_by_the_next(server: Server, job_id: str) -> None:
    """Leaving the loop early, no stop: the try ends (Failed), the recurrence is unfinished."""
    bso = BatchSizeOptimizer(job=spec(job_id), url=server.base_url, energy=CountingMeter())
    for trial in bso.trials():
        trial.report(metric=0.1)  # then the caller's own loop ends, no stop
    assert bso.last is not None and bso.last.reason == "unfinished"
    assert [t["status"] for t in read(server, f"/jobs/{job_id}/trials")["items"]] == ["Failed"]


def test_a_job_that_cannot_proceed_trains_at_the_default_and_says_so(
    server: Server, job_id: str
) -> None:
    """GET /jobs/batch_size answers 409 (nothing converged in pruning): no raise, a loud warning."""
    job = spec(job_id, batch_sizes=[16, 32], max_epochs=1, num_pruning_rounds=1)
    bso = BatchSizeOptimizer(job=job, url=server.base_url, energy=CountingMeter())
    with pytest.warns(RejectedWarning, match="THE JOB CANNOT PROCEED") as caught:
        for trial in bso.trials():
            with trial:
                # 32 misses the target in its one epoch; then there is nothing to try.
                trial.report(metric=0.95 if trial.fallback else 0.1)
    message = str(caught[0].message)
    assert f"GET {server.base_url}/jobs/batch_size: 409" in message
    assert "default batch size 32" in message and "revisit batch_sizes" in message
    last = bso.last
    assert last is not None and [t.fallback for t in last.tries] == [False, True]
    # The fallback run reached the target: the client stopped it there.
    assert last.reason == "converged" and last.tries[1].batch_size == 32
    assert len(read(server, f"/jobs/{job_id}/trials")["items"]) == 1


def test_job_spec_group_registers_into_the_group(server: Server, job_id: str) -> None:
    group = f"group-{job_id}"
    bso = BatchSizeOptimizer(
        job=spec(job_id, group=group), url=server.base_url, energy=CountingMeter()
    )
    assert bso.register()["group"] == group
    assert read(server, f"/jobs/{job_id}")["group"] == group
    members = read(server, f"/groups/{group}")
    assert [m["job_id"] for m in members["members"]] == [job_id]
    # Left out when None, so a re-registration without one keeps the stored group.
    assert "group" not in JobSpec(job_id_prefix="p", batch_sizes=[1], default_batch_size=1).wire(
        bso._session.host()
    )
    again = BatchSizeOptimizer(job=spec(job_id), url=server.base_url, energy=CountingMeter())
    assert again.register()["group"] == group


def test_async_recurrence(server: Server, job_id: str) -> None:
    async def run() -> list[list[int]]:
        meter = CountingMeter()
        bso = AsyncBatchSizeOptimizer(job=spec(job_id), url=server.base_url, energy=meter)
        sizes: list[list[int]] = []
        for _ in range(2):
            async for trial in bso.trials():
                async with trial:
                    for epoch in range(1, trial.max_epochs + 1):
                        meter.work(150.0 if trial.batch_size == 16 else 100.0)
                        metric = accuracy(trial.batch_size, epoch)
                        if (await trial.report(metric=metric)).stop:
                            break
            assert bso.last is not None and bso.last.converged
            sizes.append([t.batch_size for t in bso.last.tries])
        await bso.aclose()
        return sizes

    with ThreadPoolExecutor(1) as pool:  # asyncio.run off the tests' event loop
        assert pool.submit(asyncio.run, run()).result() == [[32], [16, 64]]
    statuses = [t["status"] for t in read(server, f"/jobs/{job_id}/trials")["items"]]
    assert statuses == ["Succeeded"] * 3


def test_max_tries_must_be_positive(job_id: str) -> None:
    bso = BatchSizeOptimizer(job=spec(job_id), url="http://127.0.0.1:1", energy=CountingMeter())
    with pytest.raises(ValueError, match="max_tries"):
        bso.trials(max_tries=0)

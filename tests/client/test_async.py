"""The asyncio twin against a real ``bso serve``: the same life cycle, fallback and failures."""

from __future__ import annotations

import pytest
from bso_client import AsyncBatchSizeOptimizer, BSORejectedError, UnavailableWarning

from tests.client.conftest import FAST, CountingMeter, Recorder, read, spec
from tests.support.server import Server, free_port


async def test_async_recurrences(server: Server, job_id: str) -> None:
    meter, recorder = CountingMeter(), Recorder()
    async with recorder.async_client() as http:
        bso = AsyncBatchSizeOptimizer(
            job=spec(job_id), url=server.base_url, energy=meter, http_client=http
        )
        batch_sizes = []
        for _ in range(2):
            async with bso.trial() as trial:
                for epoch in range(1, trial.max_epochs + 1):
                    meter.work(100)
                    decision = await trial.report(metric=0.95 if epoch == 2 else 0.5)
                    if decision.stop:
                        break
                batch_sizes.append(trial.batch_size)
        assert batch_sizes == [32, 16]
        trial = await bso.trial()  # the awaitable form
        await trial.end()
        await trial.end()  # idempotent
        await bso.aclose()
    assert recorder.statuses("POST", "/jobs") == [201]
    assert recorder.statuses("PATCH", "/trials") == [200]
    trials = read(server, f"/jobs/{job_id}/trials")["items"]
    assert [(t["status"], t["energy"]) for t in trials] == [
        ("Succeeded", 200.0),
        ("Succeeded", 200.0),
        ("Failed", None),
    ]


async def test_async_exception_ends_the_trial_failed(server: Server, job_id: str) -> None:
    bso = AsyncBatchSizeOptimizer(job=spec(job_id), url=server.base_url, energy=CountingMeter())
    with pytest.raises(ZeroDivisionError):
        async with bso.trial() as trial:
            await trial.report(metric=0.1)
            _ = 1 / 0
    trials = read(server, f"/jobs/{job_id}/trials")["items"]
    assert [(t["status"], t["failure_reason"]) for t in trials] == [("Failed", "Ended")]


async def test_async_fallback_and_refusal(server: Server, job_id: str) -> None:
    away = AsyncBatchSizeOptimizer(
        job=spec(job_id), url=f"http://127.0.0.1:{free_port()}", energy=CountingMeter(),
        retry=FAST,
    )  # fmt: skip
    with pytest.warns(UnavailableWarning, match="default batch size 32"):
        async with away.trial() as trial:
            assert trial.fallback and trial.batch_size == 32
            assert not (await trial.report(metric=0.5)).stop
            # The client knows the target: the run stops there, without the server.
            reached = await trial.report(metric=0.95)
            assert reached.stop and reached.converged and reached.fallback
    bad = AsyncBatchSizeOptimizer(
        job=spec(job_id, max_epochs=0), url=server.base_url, energy=CountingMeter()
    )
    with pytest.raises(BSORejectedError, match="max_epochs") as refused:
        async with bad.trial():
            pass
    assert refused.value.status_code == 422

"""The client's whole life cycle against a real ``bso serve``, on SQLite and PostgreSQL."""

from __future__ import annotations

import sys
import time
import warnings
from typing import Any

import httpx
import pytest
from bso_client import (
    BatchSizeOptimizer,
    BSORejectedError,
    Decision,
    EnergyWarning,
    Host,
    JobSpec,
    errors,
)

from tests.client.conftest import FAST, CountingMeter, Recorder, read, spec
from tests.support.server import Server

# When each batch size reaches the target metric 0.9 (16 never does).
REACHES_TARGET_AT = {16: None, 32: 2, 64: 3}


def accuracy(batch_size: int, epoch: int) -> float:
    at = REACHES_TARGET_AT[batch_size]
    return 0.95 if at is not None and epoch >= at else 0.5


def recurrence(bso: BatchSizeOptimizer, meter: CountingMeter) -> tuple[int, int, Decision]:
    """One training run: 100 J per epoch of "GPU work" (150 J with 16); it obeys stop."""
    with bso.trial() as trial:
        decision = None
        for epoch in range(1, trial.max_epochs + 1):
            meter.work(150.0 if trial.batch_size == 16 else 100.0)
            decision = trial.report(metric=accuracy(trial.batch_size, epoch))
            if decision.stop:
                break
        assert decision is not None
        return trial.batch_size, trial.epoch, decision


def test_recurrences_register_once_dispatch_report_and_end(server: Server, job_id: str) -> None:
    recorder, again, meter = Recorder(), Recorder(), CountingMeter()
    http, http2 = recorder.client(), again.client()
    bso = BatchSizeOptimizer(job=spec(job_id), url=server.base_url, energy=meter, http_client=http)
    runs = [recurrence(bso, meter) for _ in range(4)]
    # Pruning: the default 32 first, then down to 16 (never converges: stopped
    # at 3 x 150 J > beta 2 x 200 J), then up to 64.
    assert [(bs, epochs) for bs, epochs, _ in runs[:3]] == [(32, 2), (16, 3), (64, 3)]
    assert [d.converged for _, _, d in runs[:3]] == [True, False, True]
    assert all(d.stop and not d.fallback for _, _, d in runs)
    assert "exceeded" in runs[1][2].message

    # One registration per optimizer; the server stopped every run, so no PATCH.
    assert recorder.statuses("POST", "/jobs") == [201]
    assert recorder.statuses("GET", "/jobs/batch_size") == [200] * 4
    assert set(recorder.statuses("POST", "/report")) == {200}
    assert recorder.statuses("PATCH", "/trials") == []

    trials = read(server, f"/jobs/{job_id}/trials")["items"]
    assert [t["trial_number"] for t in trials] == [1, 2, 3, 4]
    assert all(t["status"] == "Succeeded" for t in trials)
    # Energy is the meter's exactly: the client's HTTP calls moved no joules.
    assert [t["energy"] for t in trials[:3]] == [200.0, 450.0, 300.0]
    job = read(server, f"/jobs/{job_id}")
    assert (job["gpu_model"], job["number_of_gpus"], job["max_power"]) == ("NVIDIA A40", 2, 600)

    # A second optimizer (the next night's process) re-registers: 200, same job.
    bso2 = BatchSizeOptimizer(
        job=spec(job_id), url=server.base_url, energy=meter, http_client=http2
    )
    recurrence(bso2, meter)
    assert again.statuses("POST", "/jobs") == [200]
    bso.close()
    bso2.close()
    assert not http.is_closed, "a client the caller gave is the caller's to close"
    http.close()
    http2.close()
    assert not meter.closed, "a meter the caller gave is the caller's to close"


def test_client_time_leaves_out_its_own_http_time(server: Server, job_id: str) -> None:
    def slow(request: httpx.Request) -> None:
        time.sleep(0.3)  # the server "takes" 0.3 s per call

    meter = CountingMeter()
    http = httpx.Client(event_hooks={"request": [slow]})
    bso = BatchSizeOptimizer(job=spec(job_id), url=server.base_url, energy=meter, http_client=http)
    started = time.monotonic()
    with http, bso.trial() as trial:
        for _ in range(2):
            time.sleep(0.05)  # "training"
            trial.report(metric=0.1)
        measured = trial.time
        elapsed = time.monotonic() - started  # register, dispatch, 2 reports: 4 x 0.3 s of HTTP
    assert measured >= 2 * 0.05, measured  # the training is counted
    # ... and none of the HTTP: a bound a slow machine only widens, never breaks.
    assert measured <= elapsed - 4 * 0.3, (measured, elapsed)
    reported = read(server, f"/jobs/{job_id}/trials")["items"][0]
    assert reported["status"] == "Failed"  # left the block without a final report
    assert reported["failure_reason"] == "Ended"


def test_explicit_time_and_energy_are_sent_as_given(server: Server, job_id: str) -> None:
    bso = BatchSizeOptimizer(job=spec(job_id), url=server.base_url, energy=CountingMeter())
    with bso.trial() as trial:
        trial.report(metric=0.5, time=10.0, energy=1000.0)
        assert (trial.time, trial.energy, trial.energy_source) == (10.0, 1000.0, "caller")
        decision = trial.report(metric=0.95, time=25.0, energy=2500.0)
    assert decision.stop and decision.converged
    done = read(server, f"/jobs/{job_id}/trials")["items"][0]
    assert (done["time"], done["energy"]) == (25.0, 2500.0)
    # cost = 0.5 * 2500 + 0.5 * 600 W * 25 s
    assert done["cost"] == pytest.approx(0.5 * 2500 + 0.5 * 600 * 25)


def test_time_only_reports_max_power_times_time(server: Server, job_id: str) -> None:
    """The caller's max_power: the cost is max_power x time as asked, and nothing warns."""
    job = spec(job_id, gpu_model="laptop", max_power=50.0)
    bso = BatchSizeOptimizer(job=job, url=server.base_url, energy="none")
    with warnings.catch_warnings():
        warnings.simplefilter("error", EnergyWarning)
        with bso.trial() as trial:
            time.sleep(0.02)
            trial.report(metric=0.95)
            assert trial.energy == pytest.approx(50.0 * trial.time)
            assert trial.energy_source == "max_power x time"
    done = read(server, f"/jobs/{job_id}/trials")["items"][0]
    assert done["energy"] == pytest.approx(50.0 * done["time"])
    assert done["cost"] == pytest.approx(trial.cost)
    assert read(server, f"/jobs/{job_id}")["gpu_model"] == "laptop"


def test_energy_warning_only_when_the_cost_rests_on_a_default(
    server: Server, job_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No meter, no max_power: one EnergyWarning per process, saying where max_power came from."""
    monkeypatch.setattr(errors, "_WARNED_IN_PROCESS", set())
    monkeypatch.setitem(sys.modules, "pynvml", None)  # a CPU host, whatever this one is
    bso = BatchSizeOptimizer(job=spec(job_id), url=server.base_url, energy="none")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with bso.trial() as trial:
            trial.report(metric=0.95, energy=10.0)  # the caller's energy: nothing to say
            assert not [w for w in caught if w.category is EnergyWarning]
        for _ in range(2):
            with bso.trial() as trial:
                trial.report(metric=0.5)
    said = [str(w.message) for w in caught if w.category is EnergyWarning]
    assert len(said) == 1, said
    assert "max_power x time" in said[0] and 'energy="none"' in said[0]
    host_power = bso.registered["max_power"] if bso.registered else None
    assert f"max_power {host_power:g} W from" in said[0]
    assert "the default for a CPU host" in said[0] or "RAPL's package power limit" in said[0]


def test_a_server_made_job_id_is_kept_for_later_trials(server: Server) -> None:
    bso = BatchSizeOptimizer(job=spec(None), url=server.base_url, energy=CountingMeter())
    assert bso.job_id is None
    with bso.trial() as first:
        first.report(metric=0.95)
    with bso.trial() as second:
        pass
    assert bso.job_id is not None and bso.job_id.startswith("client-")
    assert first.job_id == second.job_id == bso.job_id
    assert (first.trial_number, second.trial_number) == (1, 2)
    assert bso.registered is not None and bso.registered["job_id"] == bso.job_id


@pytest.mark.parametrize("interrupt", [RuntimeError("loader crashed"), KeyboardInterrupt()])
def test_an_exception_in_the_block_ends_the_trial_failed(
    server: Server, job_id: str, interrupt: BaseException
) -> None:
    bso = BatchSizeOptimizer(job=spec(job_id), url=server.base_url, energy=CountingMeter())
    with pytest.raises(type(interrupt)), bso.trial() as trial:
        trial.report(metric=0.1)
        raise interrupt
    trials = read(server, f"/jobs/{job_id}/trials")["items"]
    assert [(t["status"], t["failure_reason"]) for t in trials] == [("Failed", "Ended")]
    # Its batch size is explored again.
    with bso.trial() as retried:
        assert retried.batch_size == trial.batch_size == 32
        assert retried.trial_number == 2


def test_reports_after_stop_and_end_are_refused_or_repeated(server: Server, job_id: str) -> None:
    bso = BatchSizeOptimizer(job=spec(job_id), url=server.base_url, energy=CountingMeter())
    with bso.trial() as trial:
        final = trial.report(metric=0.95)
        assert final.stop
        assert trial.report(metric=0.99) is final  # no second report is sent
    with pytest.raises(RuntimeError, match="ended"):
        trial.report(metric=0.5)


def test_a_bad_spec_raises_the_servers_422_message(server: Server, job_id: str) -> None:
    bad = spec(job_id, batch_sizes=[16, 32], default_batch_size=64)
    bso = BatchSizeOptimizer(job=bad, url=server.base_url, energy=CountingMeter())
    with pytest.raises(BSORejectedError) as refused:
        bso.trial()
    assert refused.value.status_code == 422
    assert "default_batch_size 64 is not one of batch_sizes" in refused.value.message
    assert str(refused.value).startswith(f"POST {server.base_url}/jobs: 422")
    assert refused.value.fix and "Fix: " + refused.value.fix in str(refused.value)


def test_a_changed_spec_under_the_same_id_raises_the_servers_409(
    server: Server, job_id: str
) -> None:
    BatchSizeOptimizer(job=spec(job_id), url=server.base_url, energy=CountingMeter()).register()
    changed = BatchSizeOptimizer(
        job=spec(job_id, max_epochs=9), url=server.base_url, energy=CountingMeter()
    )
    with pytest.raises(BSORejectedError, match="max_epochs") as refused:
        changed.trial()
    assert refused.value.status_code == 409


def test_hardware_fields_override_the_meters(server: Server, job_id: str) -> None:
    meter = CountingMeter(Host("cpu", 1, 100.0))
    job = spec(job_id, gpu_model="NVIDIA H100", number_of_gpus=8, max_power=5600.0)
    created: dict[str, Any] = BatchSizeOptimizer(
        job=job, url=server.base_url, energy=meter
    ).register()
    assert (created["gpu_model"], created["number_of_gpus"], created["max_power"]) == (
        "NVIDIA H100",
        8,
        5600.0,
    )


def test_job_spec_is_a_frozen_copy() -> None:
    sizes = [64, 16]
    job = JobSpec(job_id_prefix="p", batch_sizes=sizes, default_batch_size=16)
    sizes.append(8)
    assert job.batch_sizes == (64, 16)
    body = job.wire(Host("cpu", 1, 100.0))
    assert body["batch_sizes"] == [64, 16] and "policy" not in body
    assert body["beta_knob"] == 2.0 and body["job_id"] is None
    assert (
        JobSpec(job_id_prefix="p", batch_sizes=[1], default_batch_size=1, beta_knob=None).wire(
            Host("cpu", 1, 1.0)
        )["beta_knob"]
        is None
    )
    with pytest.raises(AttributeError):
        job.max_epochs = 3  # type: ignore[misc]
    assert FAST.attempts == 3

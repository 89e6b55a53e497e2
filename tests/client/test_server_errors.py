"""A 5xx other than 503: the outcome is unknown, so only what is safe to repeat is repeated.

SPEC 13 (client/bso_client/http.py): a 500, 502 or 504 may come after the
server applied the request. A dispatch carries an Idempotency-Key, so it is
sent again and the server answers the retry with the trial it made (one
trial); a report is idempotent, so it is sent again and gets the answer a
retry gets. The 5xx comes from a proxy in front of a real
``bso serve`` that passes the request on and loses the answer
(tests/support/fault_proxy.py).
"""

from __future__ import annotations

import pytest
from bso_client import BatchSizeOptimizer

from tests.client.conftest import FAST, CountingMeter, read, spec
from tests.support.fault_proxy import Faults, fault_proxy
from tests.support.server import Server

STATUSES = [500, 502, 504]


@pytest.mark.parametrize("status", STATUSES)
def test_a_dispatch_answered_5xx_is_sent_again_and_makes_one_trial(
    server: Server, job_id: str, status: int
) -> None:
    faults = Faults()
    with fault_proxy(server.base_url, faults) as url:
        bso = BatchSizeOptimizer(job=spec(job_id), url=url, energy=CountingMeter(), retry=FAST)
        bso.register()
        faults.fail("GET", "/jobs/batch_size", status)
        trial = bso.trial()  # the retry carries the first try's Idempotency-Key
        assert not trial.fallback and trial.trial_number == 1
        assert faults.count("GET", "/jobs/batch_size") == 2, faults.forwarded
        assert [s for m, p, s in faults.seen if p == "/jobs/batch_size"] == [status, 200]
        with trial:
            assert not trial.report(metric=0.1).fallback
        bso.close()
    # The server made the trial once: the retry was answered with it.
    (created,) = read(server, f"/jobs/{job_id}/trials")["items"]
    assert created["trial_number"] == 1


@pytest.mark.parametrize("status", STATUSES)
def test_a_final_report_answered_5xx_is_sent_again(
    server: Server, job_id: str, status: int
) -> None:
    faults = Faults()
    meter = CountingMeter()
    with fault_proxy(server.base_url, faults) as url:
        bso = BatchSizeOptimizer(job=spec(job_id), url=url, energy=meter, retry=FAST)
        with bso, bso.trial() as trial:
            assert not trial.fallback
            meter.work(500.0)
            faults.fail("POST", "/report", status)
            decision = trial.report(metric=0.95)  # reaches the target: the final report
            sent_time, sent_energy = trial.time, trial.energy
    assert decision.stop and decision.converged and not decision.fallback
    assert faults.count("POST", "/report") == 2, faults.forwarded  # the lost answer, the retry
    assert [s for m, p, s in faults.seen if (m, p) == ("POST", "/report")] == [status, 200]
    (stored,) = read(server, f"/jobs/{job_id}/trials")["items"]
    assert stored["status"] == "Succeeded" and stored["converged"] is True
    assert (stored["time"], stored["energy"]) == (pytest.approx(sent_time), sent_energy)
    job = read(server, f"/jobs/{job_id}")
    assert job["num_trials"] == 1

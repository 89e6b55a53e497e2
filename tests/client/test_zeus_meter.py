"""``energy="zeus"``: a ZeusMonitor measures, the real ``zeus`` package is imported.

On this GPU-less machine the real zeus says why it cannot measure, and a
named meter that cannot work raises rather than falling back silently. The
arithmetic (cumulative windows, the host a job registers with) is checked
with zeus's GPU discovery answering for one A40 and a monitor whose windows
measure what the test sets, as tests/test_zeus_client.py fakes them.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import zeus.device
from bso_client import BatchSizeOptimizer, Host, MeterUnavailableError
from bso_client.meters import open_meter
from bso_client.meters.zeus import WINDOW, ZeusMeter

from tests.client.conftest import read, spec
from tests.support.server import Server


def test_energy_zeus_without_a_gpu_says_why_and_does_not_train_blind(
    server: Server, job_id: str
) -> None:
    with pytest.raises(MeterUnavailableError, match=r"zeus cannot measure here: .*NVML"):
        open_meter("zeus")
    bso = BatchSizeOptimizer(job=spec(job_id), url=server.base_url, energy="zeus")
    with pytest.raises(MeterUnavailableError, match="zeus"):
        bso.trial()
    listed = read(server, "/jobs?job_id_prefix=client&limit=500")["items"]
    assert job_id not in {j["job_id"] for j in listed}  # nothing registered without a meter


class OneA40:
    def __len__(self) -> int:
        return 1

    def get_power_management_limit_constraints(self, index: int) -> tuple[int, int]:
        return (100_000, 300_500)  # milliwatts: whole watts, as Zeus's client takes them

    def get_name(self, index: int) -> str:
        return "NVIDIA A40"


class Windows:
    """A ``ZeusMonitor``'s window API: each window measures ``next_joules``."""

    gpu_indices = [0]

    def __init__(self) -> None:
        self.open: set[str] = set()
        self.next_joules = 0.0

    def begin_window(self, name: str) -> None:
        assert name not in self.open
        self.open.add(name)

    def end_window(self, name: str) -> SimpleNamespace:
        self.open.remove(name)
        joules, self.next_joules = self.next_joules, 0.0
        return SimpleNamespace(time=1.0, total_energy=joules)


def test_a_zeus_monitor_reports_cumulative_energy_and_the_gpus(
    server: Server, job_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(zeus.device, "get_gpus", lambda: OneA40())
    windows = Windows()
    meter = ZeusMeter(windows)
    assert meter.host == Host("NVIDIA A40", 1, 300.0)
    assert windows.open == {WINDOW}
    windows.next_joules = 5.0
    assert meter.joules() == 5.0
    windows.next_joules = 7.0
    assert meter.joules() == 12.0  # a counter: every window's energy since the meter began
    assert meter.joules() == 12.0
    bso = BatchSizeOptimizer(job=spec(job_id), url=server.base_url, energy=meter)
    with bso, bso.trial() as trial:
        windows.next_joules = 120.0
        assert not trial.report(metric=0.1).stop
        windows.next_joules = 80.5
        assert trial.report(metric=0.95).stop
        assert trial.energy == pytest.approx(200.5)  # cumulative over the windows
    (stored,) = read(server, f"/jobs/{job_id}/trials")["items"]
    assert stored["energy"] == pytest.approx(200.5)
    job = read(server, f"/jobs/{job_id}")
    assert (job["gpu_model"], job["number_of_gpus"], job["max_power"]) == ("NVIDIA A40", 1, 300)
    meter.close()
    assert windows.open == set()

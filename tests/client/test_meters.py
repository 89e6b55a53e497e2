"""The energy meters' arithmetic on recorded counter values.

NVML is a fake ``pynvml`` module (recorded readings of two A100s, and of a
pre-Volta GPU without an energy counter); RAPL is a sysfs tree in a temp
folder. No GPU and no root needed.
"""

from __future__ import annotations

import os
import sys
import time
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from bso_client import EnergyWarning, Host, MeterUnavailableError
from bso_client.http import Call
from bso_client.meters import open_meter, rapl
from bso_client.meters.none import TimeOnlyMeter
from bso_client.meters.nvml import NvmlMeter, visible_handles
from bso_client.meters.rapl import RaplMeter, cpu_host
from bso_client.trial import Dispatch, Stopwatch, TrialState


class NVMLError(Exception):
    pass


class NotSupportedError(NVMLError):
    pass


class FakeGpu:
    def __init__(
        self, name: str, uuid: str, energy_mj: list[int] | None, power_mw: list[int] | None = None
    ) -> None:
        self.name, self.uuid = name, uuid
        self.energy_mj, self.power_mw = energy_mj, power_mw


def fake_pynvml(gpus: list[FakeGpu], *, init_error: bool = False) -> types.ModuleType:
    """A ``pynvml`` whose counters step through the recorded readings, one per call."""
    module = types.ModuleType("pynvml")
    calls: dict[str, int] = {"init": 0, "shutdown": 0}

    def init() -> None:
        if init_error:
            raise NVMLError("Driver Not Loaded")
        calls["init"] += 1

    def total_energy(gpu: FakeGpu) -> int:
        if gpu.energy_mj is None:
            raise NotSupportedError("Not Supported")
        return gpu.energy_mj.pop(0)

    def power(gpu: FakeGpu) -> int:
        assert gpu.power_mw is not None
        return gpu.power_mw.pop(0)

    def shutdown() -> None:
        calls["shutdown"] += 1

    module.__dict__.update(
        NVMLError=NVMLError,
        calls=calls,
        nvmlInit=init,
        nvmlShutdown=shutdown,
        nvmlDeviceGetCount=lambda: len(gpus),
        nvmlDeviceGetHandleByIndex=lambda i: gpus[i],
        nvmlDeviceGetUUID=lambda g: g.uuid.encode(),  # old bindings answer bytes
        nvmlDeviceGetName=lambda g: g.name,
        nvmlDeviceGetPowerManagementLimitConstraints=lambda g: [100_000, 400_500],
        nvmlDeviceGetTotalEnergyConsumption=total_energy,
        nvmlDeviceGetPowerUsage=power,
    )
    return module


def two_a100s() -> list[FakeGpu]:
    return [
        FakeGpu("NVIDIA A100", "GPU-aaaa-1111", [5_000_000, 5_000_000, 5_250_500, 5_400_000]),
        FakeGpu("NVIDIA A100", "GPU-bbbb-2222", [9_000_000, 9_000_000, 9_100_000, 9_300_000]),
    ]


def test_nvml_counter_sums_the_visible_gpus_in_joules() -> None:
    nvml = fake_pynvml(two_a100s())
    meter = NvmlMeter(nvml, visible=None, poll_interval=None)  # reads 1: the start
    assert not meter.sampling
    # Max power: whole watts of the maximum limit (400.5 W -> 400) times 2, as Zeus does.
    assert meter.host == Host("NVIDIA A100", 2, 800.0)
    assert meter.joules() == 0.0  # read 2: nothing moved
    assert meter.joules() == pytest.approx((250_500 + 100_000) / 1000)  # read 3
    assert meter.joules() == pytest.approx((400_000 + 300_000) / 1000)  # read 4: cumulative
    meter.close()
    assert nvml.calls == {"init": 1, "shutdown": 1}


@pytest.mark.parametrize(
    ("visible", "names"),
    [
        (None, ["GPU-aaaa-1111", "GPU-bbbb-2222"]),
        ("1", ["GPU-bbbb-2222"]),
        ("1,0", ["GPU-bbbb-2222", "GPU-aaaa-1111"]),
        ("0,7,1", ["GPU-aaaa-1111"]),  # CUDA stops at the first entry naming no device
        ("GPU-bbbb", ["GPU-bbbb-2222"]),  # a unique UUID prefix
        ("bbbb-2222,GPU-aaaa-1111", ["GPU-bbbb-2222", "GPU-aaaa-1111"]),
        ("GPU-", []),  # ambiguous
        ("", []),
    ],
)
def test_cuda_visible_devices_picks_the_gpus(visible: str | None, names: list[str]) -> None:
    handles = visible_handles(fake_pynvml(two_a100s()), visible)
    assert [h.uuid for h in handles] == names


def test_nvml_honours_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    meter = NvmlMeter(fake_pynvml(two_a100s()), poll_interval=None)
    assert meter.host == Host("NVIDIA A100", 1, 400.0)
    assert meter.joules() == 0.0
    assert meter.joules() == pytest.approx(100.0)
    meter.close()


def test_nvml_without_an_energy_counter_integrates_sampled_power() -> None:
    old = FakeGpu("Tesla P100", "GPU-p100", None, [50_000, 150_000, 150_000, 250_000, 100_000])
    clock = iter([0.0, 2.0, 3.0, 5.0, 5.0])
    meter = NvmlMeter(fake_pynvml([old]), poll_interval=None, clock=lambda: next(clock))
    assert meter.sampling  # first sample at t=0: 50 W
    meter.sample()  # t=2, 150 W: (50 + 150) / 2 * 2 = 200 J
    assert meter.joules() == pytest.approx(200 + 150)  # t=3, 150 W: + 150 J
    assert meter.joules() == pytest.approx(350 + 400)  # t=5, 250 W: + 2 * 200 J
    assert meter.joules() == pytest.approx(750)  # t=5 again: no time, no energy
    meter.close()


def test_nvml_that_cannot_start_or_sees_no_gpu_is_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(MeterUnavailableError, match="Driver Not Loaded"):
        NvmlMeter(fake_pynvml(two_a100s(), init_error=True))
    nvml = fake_pynvml(two_a100s())
    with pytest.raises(MeterUnavailableError, match="no GPU"):
        NvmlMeter(nvml, visible="")
    assert nvml.calls["shutdown"] == 1  # not left initialised
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed
    with pytest.raises(MeterUnavailableError, match=r"bso-client\[nvidia\]"):
        NvmlMeter()


def test_mixed_gpus_are_registered_as_the_first_with_a_warning() -> None:
    gpus = two_a100s()
    gpus[1].name = "NVIDIA A40"
    with pytest.warns(EnergyWarning, match="differ"):
        meter = NvmlMeter(fake_pynvml(gpus), poll_interval=None)
    assert meter.host.gpu_model == "NVIDIA A100"
    meter.close()


def test_auto_takes_nvml_when_pynvml_works(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(two_a100s()))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a GPU host: nothing to warn about
        meter = open_meter("auto")
    assert meter.name == "nvml" and meter.host.number_of_gpus == 2
    meter.close()


# -------------------------------------------------------------------- RAPL


def zone(root: Path, name: str, label: str, energy: int, max_range: int, **limits: int) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "name").write_text(label + "\n")
    (path / "energy_uj").write_text(f"{energy}\n")
    (path / "max_energy_range_uj").write_text(f"{max_range}\n")
    for file, value in limits.items():
        (path / file).write_text(f"{value}\n")
    return path


@pytest.fixture
def powercap(tmp_path: Path) -> Iterator[Path]:
    """Two packages (one with sub-zones), and a psys zone that must not be added."""
    zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000, 262_143_328_850,
         constraint_0_power_limit_uw=125_000_000)  # fmt: skip
    zone(tmp_path, "intel-rapl:0:0", "core", 500_000, 262_143_328_850)
    zone(tmp_path, "intel-rapl:1", "package-1", 4_000_000_000, 4_294_967_295,
         constraint_0_power_limit_uw=95_000_000, constraint_0_max_power_uw=150_000_000)  # fmt: skip
    zone(tmp_path, "intel-rapl:2", "psys", 7, 262_143_328_850)
    yield tmp_path


def set_energy(root: Path, name: str, microjoules: int) -> None:
    """Replace the counter at once, as the kernel does: a reader never sees half a write."""
    temporary = root / name / "energy_uj.new"
    temporary.write_text(f"{microjoules}\n")
    os.replace(temporary, root / name / "energy_uj")


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(0.005)


def test_rapl_adds_packages_and_survives_a_wrap(powercap: Path) -> None:
    meter = RaplMeter(powercap, poll_interval=None)
    assert meter.host == Host("cpu", 1, 125.0 + 150.0)  # the max power where given
    set_energy(powercap, "intel-rapl:0", 3_000_000)  # +2 J
    set_energy(powercap, "intel-rapl:1", 4_100_000_000)  # +100 J
    set_energy(powercap, "intel-rapl:0:0", 9_999_999)  # a sub-zone: inside package-0's
    set_energy(powercap, "intel-rapl:2", 10**12)  # psys: not added
    assert meter.joules() == pytest.approx(102.0)
    # package-1 wraps: 4_100_000_000 -> max 4_294_967_295 -> 0 -> 5_000_000
    set_energy(powercap, "intel-rapl:1", 5_000_000)
    assert meter.joules() == pytest.approx(
        102.0 + (4_294_967_295 - 4_100_000_000 + 5_000_000) / 1e6
    )
    meter.close()


def test_rapl_poller_reads_between_reports(powercap: Path) -> None:
    meter = RaplMeter(powercap, poll_interval=0.01)
    package_1 = meter._zones[1]
    set_energy(powercap, "intel-rapl:1", 4_294_000_000)
    # Wait until the poller (not this thread: no report is made) has seen the value before the wrap.
    wait_for(lambda: package_1.last_uj == 4_294_000_000, "the poller reads the counter")
    set_energy(powercap, "intel-rapl:1", 1_000_000)
    expected = (4_294_967_295 - 4_000_000_000 + 1_000_000) / 1e6
    assert meter.joules() == pytest.approx(expected)
    meter.close()


def test_rapl_poller_outlives_a_reading_that_is_not_a_number(powercap: Path) -> None:
    """A counter that once reads as no number (a half-written file, not sysfs) is read again."""
    meter = RaplMeter(powercap, poll_interval=0.01)
    package_1 = meter._zones[1]
    reads = [0]
    read_uj = package_1.read_uj

    def counted() -> int:
        reads[0] += 1
        return read_uj()

    package_1.read_uj = counted  # type: ignore[method-assign]
    (powercap / "intel-rapl:1" / "energy_uj").write_text("")
    wait_for(lambda: reads[0] >= 3, "the poller tries the empty counter")
    assert meter._poller is not None and meter._poller.is_alive()
    set_energy(powercap, "intel-rapl:1", 4_000_500_000)
    wait_for(lambda: package_1.last_uj == 4_000_500_000, "the poller reads on")
    assert meter.joules() == pytest.approx(0.5)  # 500_000 uJ, the empty reading skipped
    meter.close()


def test_rapl_without_zones_or_readable_counters(tmp_path: Path) -> None:
    with pytest.raises(MeterUnavailableError, match="no RAPL package zone"):
        RaplMeter(tmp_path)
    broken = zone(tmp_path, "intel-rapl:0", "package-0", 1, 10)
    (broken / "energy_uj").unlink()
    (broken / "energy_uj").mkdir()  # unreadable as a file, as a 0400 file is to non-root
    with pytest.raises(MeterUnavailableError, match="not readable"):
        RaplMeter(tmp_path)


def test_cpu_host_falls_back_to_the_documented_default(tmp_path: Path, powercap: Path) -> None:
    assert cpu_host(tmp_path / "none") == (Host("cpu", 1, 100.0), "the default for a CPU host")
    assert cpu_host(powercap)[0].max_power == 275.0


def test_auto_on_a_cpu_host_takes_rapl_then_time_only(
    monkeypatch: pytest.MonkeyPatch, powercap: Path, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setitem(sys.modules, "zeus.monitor", None)
    monkeypatch.setattr(rapl, "POWERCAP", powercap)
    # Opening a meter warns of nothing: the client warns only when a report's cost
    # rests on a max_power the caller did not give (tests/client/test_lifecycle.py).
    with warnings.catch_warnings():
        warnings.simplefilter("error", EnergyWarning)
        meter = open_meter("auto")
        assert meter.name == "rapl" and meter.host == Host("cpu", 1, 275.0)
        meter.close()
        monkeypatch.setattr(rapl, "POWERCAP", tmp_path / "nothing")
        meter = open_meter("auto")
    assert isinstance(meter, TimeOnlyMeter)
    assert meter.name == "none" and not meter.measures_energy
    assert "nvml: nvidia-ml-py is not installed" in meter.reason
    assert meter.max_power_source == "the default for a CPU host, gpu_model 'cpu'"
    assert meter.host == Host("cpu", 1, 100.0)


def test_named_meters_that_cannot_work_say_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with pytest.raises(MeterUnavailableError):
        open_meter("nvml")
    with pytest.raises(ValueError, match="energy must be one of"):
        open_meter("joulemeter")


def test_energy_none_still_describes_gpus_nvml_sees(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(two_a100s()))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    meter = open_meter("none")
    assert meter.host == Host("NVIDIA A100", 2, 800.0)
    assert isinstance(meter, TimeOnlyMeter)
    assert meter.max_power_source == "NVML's power limits of 2 x NVIDIA A100"
    assert meter.reason == 'energy="none"'


# --------------------------------------------------------------- stopwatch


class Steps:
    """A meter and a clock that move only when told."""

    name = "steps"
    measures_energy = True
    host = Host("NVIDIA A40", 1, 300.0)

    def __init__(self) -> None:
        self.now, self.total, self.fail = 0.0, 0.0, False

    def joules(self) -> float:
        if self.fail:
            raise RuntimeError("GPU fell off the bus")
        return self.total

    def close(self) -> None:
        pass

    def clock(self) -> float:
        return self.now


def test_stopwatch_counts_only_running_segments() -> None:
    steps = Steps()
    watch = Stopwatch(steps, steps.clock)
    watch.start()
    steps.now, steps.total = 10.0, 1000.0
    watch.pause()  # a report: the client's HTTP time follows
    steps.now, steps.total = 15.0, 1100.0
    watch.start()
    steps.now, steps.total = 20.0, 1600.0
    watch.pause()
    assert (watch.time, watch.energy) == (15.0, 1500.0)


def test_a_failing_meter_turns_into_an_estimate_with_a_warning() -> None:
    steps = Steps()
    state = TrialState(Dispatch("j", 8, 1), max_epochs=3, max_power=300.0, meter=steps,
                       clock=steps.clock)  # fmt: skip
    steps.now, steps.total = 2.0, 50.0
    state.report_call(0.1, None, None)
    assert (state.time, state.energy, state.energy_source) == (2.0, 50.0, "steps")
    state.answered({"stop_train": False, "converged": False, "message": ""})
    steps.fail, steps.now = True, 4.0
    with pytest.warns(EnergyWarning, match="fell off the bus"):
        call = state.report_call(0.2, None, None)
    assert state.energy_source == "max_power x time"
    assert state.energy == pytest.approx(300.0 * 4.0)
    assert isinstance(call, Call) and call.json is not None
    assert (call.json["time"], call.json["energy"]) == (4.0, pytest.approx(1200.0))

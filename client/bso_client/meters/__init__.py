"""Energy meters, and choosing one: ``energy="auto"|"nvml"|"zeus"|"rapl"|"none"`` or a meter.

"auto" takes the first that works here, in that order: NVML for NVIDIA GPUs,
a ZeusMonitor (which also knows AMD GPUs) when zeus is installed, RAPL for a
CPU host whose counters are readable, else time only. A host without a GPU
is described as ``gpu_model="cpu"`` with RAPL's power limit or a default.
Opening a meter warns of nothing: the client gives one ``EnergyWarning`` per
process only when a report's cost really is ``max_power x time`` with a
max_power the caller did not give (``bso_client.session``).
"""

from __future__ import annotations

import logging
from typing import Literal

from bso_client.meters.base import DEFAULT_CPU_POWER_W, EnergyMeter, MeterUnavailableError
from bso_client.meters.none import TimeOnlyMeter
from bso_client.meters.nvml import NvmlMeter
from bso_client.meters.rapl import RaplMeter, cpu_host
from bso_client.meters.zeus import ZeusMeter

EnergyChoice = Literal["auto", "nvml", "zeus", "rapl", "none"]
CHOICES: tuple[str, ...] = ("auto", "nvml", "zeus", "rapl", "none")

__all__ = [
    "CHOICES",
    "DEFAULT_CPU_POWER_W",
    "EnergyChoice",
    "EnergyMeter",
    "MeterUnavailableError",
    "NvmlMeter",
    "RaplMeter",
    "TimeOnlyMeter",
    "ZeusMeter",
    "open_meter",
]


logger = logging.getLogger("bso_client")


def _time_only(reason: str) -> TimeOnlyMeter:
    try:  # GPUs that NVML sees are still described as they are
        gpus = NvmlMeter(poll_interval=None)
    except MeterUnavailableError:
        host, source = cpu_host()
        source = f"{source}, gpu_model 'cpu'"
    else:
        host = gpus.host
        gpus.close()
        source = f"NVML's power limits of {host.number_of_gpus} x {host.gpu_model}"
    logger.info("no energy meter (%s); max_power %g W from %s", reason, host.max_power, source)
    return TimeOnlyMeter(host, reason=reason, max_power_source=source)


def open_meter(choice: str | EnergyMeter) -> EnergyMeter:
    """The meter ``choice`` names (or is); "auto" falls through to time only, never fails.

    A named meter that cannot work here raises ``MeterUnavailableError`` saying why.
    """
    if not isinstance(choice, str):
        return choice
    if choice not in CHOICES:
        raise ValueError(f"energy must be one of {', '.join(CHOICES)} or a meter, not {choice!r}")
    if choice == "nvml":
        return NvmlMeter()
    if choice == "zeus":
        return ZeusMeter()
    if choice == "rapl":
        return _cpu_warning(RaplMeter())
    if choice == "none":
        return _time_only('energy="none"')
    reasons = []
    for make in (NvmlMeter, ZeusMeter):
        try:
            return make()
        except MeterUnavailableError as exc:
            reasons.append(f"{make.name}: {exc}")
    try:
        return _cpu_warning(RaplMeter())
    except MeterUnavailableError as exc:
        reasons.append(f"rapl: {exc}")
    return _time_only("; ".join(reasons))


def _cpu_warning(meter: RaplMeter) -> RaplMeter:
    logger.info(
        "no GPU: measuring the CPU packages with RAPL; this host is described as gpu_model "
        "'cpu' with max_power %g W (JobSpec(gpu_model=..., max_power=...) overrides that)",
        meter.host.max_power,
    )
    return meter

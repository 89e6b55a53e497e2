"""A ``ZeusMonitor`` (the ``zeus`` package): NVIDIA and AMD GPUs, and CPUs, as Zeus measures them.

One measurement window stays open; each reading closes it, adds what it
measured and opens the next, so the readings are cumulative like a counter.
"""

from __future__ import annotations

import importlib
from typing import Any

from bso_client.meters.base import MeterUnavailableError
from bso_client.spec import Host

WINDOW = "bso_client"


class ZeusMeter:
    """Energy of the GPUs a ``ZeusMonitor`` watches (made here, or given)."""

    name = "zeus"
    measures_energy = True

    def __init__(self, monitor: Any = None) -> None:
        try:
            zeus_monitor = importlib.import_module("zeus.monitor")
            zeus_device = importlib.import_module("zeus.device")
        except ImportError as exc:
            raise MeterUnavailableError("zeus is not installed") from exc
        try:
            gpus = zeus_device.get_gpus()
            if monitor is None:
                if len(gpus) == 0:
                    raise MeterUnavailableError("zeus sees no GPU")
                monitor = zeus_monitor.ZeusMonitor()
            indices = list(monitor.gpu_indices)
            if not indices:
                raise MeterUnavailableError("the ZeusMonitor watches no GPU")
            limit_mw = gpus.get_power_management_limit_constraints(indices[0])[1]
            self.host = Host(
                str(gpus.get_name(indices[0])),
                len(indices),
                float(int(limit_mw) // 1000 * len(indices)),
            )
        except MeterUnavailableError:
            raise
        except Exception as exc:  # zeus raises its own errors for missing drivers
            raise MeterUnavailableError(f"zeus cannot measure here: {exc}") from exc
        self._monitor = monitor
        self._total = 0.0
        self._monitor.begin_window(WINDOW)

    def joules(self) -> float:
        measurement = self._monitor.end_window(WINDOW)
        self._total += float(measurement.total_energy)
        self._monitor.begin_window(WINDOW)
        return self._total

    def close(self) -> None:
        self._monitor.end_window(WINDOW)

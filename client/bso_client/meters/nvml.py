"""NVIDIA GPUs through NVML (the ``nvidia-ml-py`` distribution, imported as ``pynvml``).

The GPUs measured are the ones this process may use: ``CUDA_VISIBLE_DEVICES``
(indices or UUIDs, read as CUDA reads it: up to the first entry that names no
device) or, when unset, every GPU. NVML numbers GPUs in PCI bus order, as CUDA
does with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``.

Energy: the total-energy counter (millijoules, Volta and newer); on older
GPUs, power sampled every ``poll_interval`` seconds by a background thread
and integrated (trapezoids). Max power: the maximum power limit times the
GPU count, in whole watts per GPU, as Zeus's client computes it (so a job
registered by either client matches).
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from bso_client.errors import EnergyWarning, warn
from bso_client.meters.base import MeterUnavailableError
from bso_client.spec import Host


def _load() -> ModuleType:
    try:
        return importlib.import_module("pynvml")
    except ImportError as exc:
        raise MeterUnavailableError(
            "nvidia-ml-py is not installed (pip install 'bso-client[nvidia]')"
        ) from exc


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def visible_handles(nvml: Any, visible: str | None) -> list[Any]:
    """Handles of the GPUs ``CUDA_VISIBLE_DEVICES`` lets this process see."""
    count = nvml.nvmlDeviceGetCount()
    if visible is None:
        return [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    uuids = None
    handles: list[Any] = []
    for entry in (e.strip() for e in visible.split(",")):
        if entry.isdigit() or (entry.startswith("-") and entry[1:].isdigit()):
            index = int(entry)
            if not 0 <= index < count:
                break  # CUDA ignores this entry and every one after it
            handles.append(nvml.nvmlDeviceGetHandleByIndex(index))
            continue
        if uuids is None:
            uuids = [
                (_text(nvml.nvmlDeviceGetUUID(h)), h)
                for h in (nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count))
            ]
        wanted = entry if entry.startswith(("GPU-", "MIG-")) else f"GPU-{entry}"
        matches = [h for uuid, h in uuids if uuid.startswith(wanted)]
        if len(matches) != 1:
            break  # unknown or ambiguous: CUDA stops here too
        handles.append(matches[0])
    return handles


class NvmlMeter:
    """The visible GPUs' energy since the meter was made."""

    name = "nvml"
    measures_energy = True

    def __init__(
        self,
        nvml: ModuleType | None = None,
        *,
        visible: str | None = None,
        poll_interval: float | None = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nvml: Any = nvml or _load()
        try:
            self._nvml.nvmlInit()
        except self._nvml.NVMLError as exc:
            raise MeterUnavailableError(f"NVML cannot start: {exc}") from exc
        try:
            if visible is None:
                visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            self._handles = visible_handles(self._nvml, visible)
            if not self._handles:
                raise MeterUnavailableError("NVML sees no GPU this process may use")
            self.host = self._describe()
            self._clock = clock
            self._lock = threading.Lock()
            self._counter = self._energy_counter_mj()
            self._start_mj = self._counter
            self._sampled_j = 0.0
            # Power is read only where there is no counter to read instead.
            self._last_sample = (
                (self._clock(), self._power_w()) if self._counter is None else (0, 0)
            )
        except BaseException:
            self._nvml.nvmlShutdown()
            raise
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        if self._counter is None and poll_interval is not None:
            self._poller = threading.Thread(
                target=self._poll, args=(poll_interval,), name="bso-nvml", daemon=True
            )
            self._poller.start()

    @property
    def sampling(self) -> bool:
        """True on GPUs without an energy counter (before Volta): power is sampled."""
        return self._counter is None

    def _describe(self) -> Host:
        names = [_text(self._nvml.nvmlDeviceGetName(h)) for h in self._handles]
        if len(set(names)) > 1:
            warn(
                f"the visible GPUs differ ({', '.join(sorted(set(names)))}); the job is "
                f"registered as {names[0]}",
                EnergyWarning,
            )
        limit_mw = self._nvml.nvmlDeviceGetPowerManagementLimitConstraints(self._handles[0])[1]
        count = len(self._handles)
        return Host(names[0], count, float(int(limit_mw) // 1000 * count))

    def _energy_counter_mj(self) -> int | None:
        """The summed total-energy counters, or None when a GPU has none."""
        try:
            return sum(
                int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(h)) for h in self._handles
            )
        except self._nvml.NVMLError:
            return None

    def _power_w(self) -> float:
        return sum(int(self._nvml.nvmlDeviceGetPowerUsage(h)) for h in self._handles) / 1000

    def sample(self) -> None:
        """Add the energy since the last sample (trapezoid of the two power readings)."""
        with self._lock:
            now, watts = self._clock(), self._power_w()
            then, before = self._last_sample
            self._sampled_j += (now - then) * (watts + before) / 2
            self._last_sample = (now, watts)

    def _poll(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.sample()
            except self._nvml.NVMLError:
                return

    def joules(self) -> float:
        if self._counter is None:
            self.sample()
            return self._sampled_j
        counter = self._energy_counter_mj()
        if counter is None or self._start_mj is None:
            raise MeterUnavailableError("the GPUs' energy counter stopped answering")
        return (counter - self._start_mj) / 1000

    def close(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
        self._nvml.nvmlShutdown()

"""Linux RAPL: the CPU packages' energy counters under /sys/class/powercap.

Each package zone (``intel-rapl:N``, named ``package-N``; AMD CPUs use the same
interface) has ``energy_uj``, a microjoule counter that wraps to 0 after
``max_energy_range_uj``. A wrap is seen as a reading below the previous one;
a background thread reads the counters every ``poll_interval`` seconds so
that no two readings are a whole wrap apart (at 200 W the smallest ranges
wrap in about 20 s). Sub-zones (core, dram) are inside the package's count,
and ``psys`` counts the platform, so neither is added.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from bso_client.meters.base import DEFAULT_CPU_POWER_W, MeterUnavailableError
from bso_client.spec import Host

POWERCAP = Path("/sys/class/powercap")


@dataclass
class _Zone:
    path: Path
    max_range_uj: int
    last_uj: int
    total_uj: int = 0

    def read_uj(self) -> int:
        return int((self.path / "energy_uj").read_text())

    def advance(self) -> None:
        current = self.read_uj()
        if current >= self.last_uj:
            self.total_uj += current - self.last_uj
        else:  # wrapped past max_energy_range_uj back to 0
            self.total_uj += self.max_range_uj - self.last_uj + current
        self.last_uj = current


def package_zones(root: Path | None = None) -> list[Path]:
    """The top-level package zones, in order: ``intel-rapl:0``, ``intel-rapl:1``, ..."""
    zones = []
    for zone in sorted((root or POWERCAP).glob("intel-rapl:*")):
        if zone.name.count(":") != 1:
            continue  # a sub-zone (core, uncore, dram)
        try:
            name = (zone / "name").read_text().strip()
        except OSError:
            continue
        if name.startswith("package"):
            zones.append(zone)
    return zones


def rapl_power_limit(root: Path | None = None) -> float | None:
    """The packages' summed power limit in watts, where readable; None otherwise.

    A zone's ``constraint_0`` is its long-term limit; its ``max_power_uw``
    (the hardware's ceiling) is taken where the kernel gives one, like the
    GPU's maximum limit Zeus's client takes, else the configured limit.
    """
    total = 0.0
    zones = package_zones(root)
    for zone in zones:
        watts = None
        for name in ("constraint_0_max_power_uw", "constraint_0_power_limit_uw"):
            try:
                value = int((zone / name).read_text())
            except (OSError, ValueError):
                continue
            if value > 0:
                watts = value / 1e6
                break
        if watts is None:
            return None
        total += watts
    return total if zones else None


def cpu_host(root: Path | None = None) -> tuple[Host, str]:
    """The machine as a job's hardware when it has no GPU, and where max_power came from."""
    limit = rapl_power_limit(root)
    if limit is not None:
        return Host("cpu", 1, limit), "RAPL's package power limit"
    return Host("cpu", 1, DEFAULT_CPU_POWER_W), "the default for a CPU host"


class RaplMeter:
    """The CPU packages' energy since the meter was made."""

    name = "rapl"
    measures_energy = True

    def __init__(self, root: Path | None = None, *, poll_interval: float | None = 1.0) -> None:
        paths = package_zones(root)
        if not paths:
            raise MeterUnavailableError(f"no RAPL package zone under {root or POWERCAP}")
        try:
            self._zones = [_Zone(p, int((p / "max_energy_range_uj").read_text()), 0) for p in paths]
            for zone in self._zones:
                zone.last_uj = zone.read_uj()
        except (OSError, ValueError) as exc:
            raise MeterUnavailableError(f"RAPL counters are not readable: {exc}") from exc
        self.host, _ = cpu_host(root)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        if poll_interval is not None:
            self._poller = threading.Thread(
                target=self._poll, args=(poll_interval,), name="bso-rapl", daemon=True
            )
            self._poller.start()

    def _poll(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.joules()
            except OSError:
                return  # the zone went away; the next reading says so
            except ValueError:
                continue  # not a number (sysfs reads are whole; a file is not): read again

    def joules(self) -> float:
        with self._lock:
            for zone in self._zones:
                zone.advance()
            return sum(zone.total_uj for zone in self._zones) / 1e6

    def close(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)

"""What an energy meter is to the client: cumulative joules, and the host it measures."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from bso_client.errors import BSOError
from bso_client.spec import Host

# A CPU host with no readable power limit is described with this (watts).
DEFAULT_CPU_POWER_W = 100.0


class MeterUnavailableError(BSOError):
    """The meter cannot work here (library missing, no device, counter unreadable)."""


@runtime_checkable
class EnergyMeter(Protocol):
    """Counts energy from its creation on; ``joules()`` never goes down.

    ``name`` is what the client reports as the energy's source ("nvml",
    "zeus", "rapl", "none", or a custom meter's own). ``host`` describes the
    hardware for the job's spec; ``measures_energy`` is False for a meter that
    only keeps time (the client then reports ``max_power x time``).
    """

    name: str
    host: Host
    measures_energy: bool

    def joules(self) -> float: ...

    def close(self) -> None: ...

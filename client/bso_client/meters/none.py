"""No energy meter: time only. The client then reports ``max_power x time`` as energy."""

from __future__ import annotations

from bso_client.spec import Host


class TimeOnlyMeter:
    """Measures nothing; ``host`` is what the client could learn otherwise."""

    name = "none"
    measures_energy = False

    def __init__(self, host: Host) -> None:
        self.host = host

    def joules(self) -> float:
        return 0.0

    def close(self) -> None:
        return None

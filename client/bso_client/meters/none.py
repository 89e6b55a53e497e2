"""No energy meter: time only. The client then reports ``max_power x time`` as energy."""

from __future__ import annotations

from bso_client.spec import Host


class TimeOnlyMeter:
    """Measures nothing; ``host`` is what the client could learn otherwise.

    ``reason`` says why no meter measures energy, ``max_power_source`` where
    ``host.max_power`` came from: the client says both, once, if a report's
    cost then rests on a max_power the caller did not give.
    """

    name = "none"
    measures_energy = False

    def __init__(self, host: Host, *, reason: str = "", max_power_source: str = "") -> None:
        self.host = host
        self.reason = reason
        self.max_power_source = max_power_source

    def joules(self) -> float:
        return 0.0

    def close(self) -> None:
        return None

"""The energy-time cost that Zeus minimises."""

from __future__ import annotations


def zeus_cost(energy: float, time: float, eta_knob: float, max_power: float) -> float:
    """``eta * energy + (1 - eta) * max_power * time`` (Zeus, eq. 2).

    ``max_power`` converts seconds to joules, so that ``eta_knob`` weighs two
    quantities of the same unit: eta = 1 minimises energy, eta = 0 time.
    """
    return eta_knob * energy + (1.0 - eta_knob) * max_power * time


def reward(cost: float) -> float:
    """The bandit maximises reward, so reward is the negated cost."""
    return -cost

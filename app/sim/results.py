"""What a replay produces: its settings, every try, the baselines, and the summary numbers."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from app.bandit import Policy
from app.sim.traces import Case


class MetricCurve(StrEnum):
    """How the simulated validation metric approaches the target before the reach epoch."""

    LINEAR = "linear"  # closes the gap by the same amount every epoch
    CONCAVE = "concave"  # closes most of it early, then flattens (as real curves do)


@dataclass(frozen=True, slots=True)
class ReplaySettings:
    """The knobs of a replay; ``seed`` seeds both the job's bandit and the path draws."""

    eta_knob: float = 0.5
    beta_knob: float | None = 2.0
    window_size: int = 0
    seed: int = 1
    recurrences: int | None = None  # None: the case's default (2 x |B| x |P|)
    policy: Policy = Policy.ZEUS
    metric_curve: MetricCurve = MetricCurve.LINEAR

    def recurrences_for(self, case: Case) -> int:
        return self.recurrences if self.recurrences is not None else case.default_recurrences


@dataclass(frozen=True, slots=True)
class TryRecord:
    """One try of one recurrence: one trial, trained until the optimiser stopped it."""

    recurrence: int  # 1-based
    attempt: int  # 1-based within the recurrence
    trial_number: int
    batch_size: int
    epochs: int
    time: float
    energy: float
    cost: float
    converged: bool


@dataclass(frozen=True, slots=True)
class Baseline:
    """Always one batch size, replayed on the same trace and seed (no early stopping)."""

    batch_size: int
    expected_cost: float  # per recurrence
    per_recurrence: tuple[float, ...]

    def cumulative(self, recurrences: int) -> float:
        return sum(self.per_recurrence[:recurrences])


@dataclass(frozen=True)
class CaseResult:
    """The outcome of replaying one case."""

    case: Case
    settings: ReplaySettings
    recurrences: int  # asked for
    tries: tuple[TryRecord, ...]
    per_recurrence: tuple[float, ...]  # cost of each recurrence played, failed tries included
    default: Baseline
    oracle: Baseline
    gave_up: int = 0  # recurrences that did not converge in 20 tries
    error: str | None = None  # why the replay stopped early

    @property
    def played(self) -> int:
        return len(self.per_recurrence)

    @property
    def cumulative_cost(self) -> float:
        return sum(self.per_recurrence)

    @property
    def savings_vs_default_pct(self) -> float | None:
        """How much cheaper than always the default batch size (None before any recurrence)."""
        if not self.played:
            return None
        return 100.0 * (1.0 - self.cumulative_cost / self.default.cumulative(self.played))

    @property
    def cost_over_oracle(self) -> float | None:
        """Cumulative cost over the oracle's on the same recurrences (None before any)."""
        if not self.played:
            return None
        return self.cumulative_cost / self.oracle.cumulative(self.played)

    @property
    def batch_size_sequence(self) -> tuple[int, ...]:
        """The batch size of every try, in order."""
        return tuple(t.batch_size for t in self.tries)

    @property
    def settled_at(self) -> int | None:
        """The recurrence from which every try used the oracle's batch size (None: never)."""
        settled: int | None = None
        for t in self.tries:
            if t.batch_size != self.oracle.batch_size:
                settled = None
            elif settled is None:
                settled = t.recurrence
        return settled

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (infinite expected costs become null)."""
        case = self.case
        return {
            "workload": case.workload.name,
            "dataset": case.workload.dataset,
            "network": case.workload.network,
            "optimizer": case.workload.optimizer,
            "gpu": case.gpu,
            "power_limit": case.power_limit,
            "batch_sizes": list(case.batch_sizes),
            "default_batch_size": case.default_batch_size,
            "notes": list(case.notes),
            "settings": asdict(self.settings),
            "recurrences": self.recurrences,
            "recurrences_played": self.played,
            "cumulative_cost": self.cumulative_cost,
            "default": _baseline_dict(self.default, self.played),
            "oracle": _baseline_dict(self.oracle, self.played),
            "savings_vs_default_pct": self.savings_vs_default_pct,
            "cost_over_oracle": self.cost_over_oracle,
            "settled_at_recurrence": self.settled_at,
            "gave_up_recurrences": self.gave_up,
            "error": self.error,
            "batch_size_sequence": list(self.batch_size_sequence),
            "per_recurrence_cost": list(self.per_recurrence),
            "tries": [asdict(t) for t in self.tries],
        }


def _finite(value: float) -> float | None:
    return value if value != float("inf") else None


def _baseline_dict(baseline: Baseline, recurrences: int) -> dict[str, Any]:
    return {
        "batch_size": baseline.batch_size,
        "expected_cost_per_recurrence": _finite(baseline.expected_cost),
        "cumulative_cost": baseline.cumulative(recurrences),
        "per_recurrence_cost": list(baseline.per_recurrence[:recurrences]),
    }

"""Immutable values the algorithm reads and returns."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum


class Stage(StrEnum):
    """Which half of the algorithm a job is in."""

    PRUNING = "Pruning"
    MAB = "MAB"


class TrialType(StrEnum):
    """In which stage, and why, a trial was dispatched (Zeus's names)."""

    EXPLORATION = "Exploration"
    CONCURRENT = "Concurrent"
    MAB = "MAB"


class StopReason(StrEnum):
    """Why a report was answered as it was: what operators count (metrics)."""

    KEEP_TRAINING = "keep_training"
    CONVERGED = "converged"
    STOPPED_EARLY = "stopped_early"  # the cost exceeded beta * min_cost
    MAX_EPOCHS = "max_epochs"  # the epoch budget ran out before the target


class TrialStatus(StrEnum):
    """Life cycle of a trial (Zeus's names)."""

    DISPATCHED = "Dispatched"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class FailureReason(StrEnum):
    """Why a trial ended Failed, without a result."""

    ENDED = "Ended"  # PATCH /trials before any final report
    LEASE_EXPIRED = "LeaseExpired"  # no dispatch or report within the lease


class Policy(StrEnum):
    """Which algorithm a job runs: the paper's, or the paper's with the predictive rules."""

    ZEUS = "zeus"
    PREDICTIVE = "predictive"


@dataclass(frozen=True, slots=True)
class JobParams:
    """The part of a job's specification that the algorithm reads."""

    batch_sizes: tuple[int, ...]  # ascending, distinct
    default_batch_size: int
    eta_knob: float = 0.5
    beta_knob: float | None = 2.0
    target_metric: float = 0.5
    higher_is_better_metric: bool = True
    max_epochs: int = 100
    num_pruning_rounds: int = 2
    window_size: int = 0
    mab_prior_mean: float = 0.0
    mab_prior_precision: float = 0.0
    mab_num_explorations: int = 2
    max_power: float = 300.0
    policy: Policy = Policy.ZEUS


@dataclass(frozen=True, slots=True)
class Exploration:
    """A non-Failed Exploration trial, as the pruning walk sees it."""

    trial_number: int
    batch_size: int
    dispatched: bool  # still running: no final report yet
    converged: bool | None = None
    cost: float | None = None


@dataclass(frozen=True, slots=True)
class RewardStats:
    """Running count, mean and sum of squared deviations of rewards (Welford).

    Lets an arm be refitted on its whole history in O(1), without reading it.
    """

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, value: float) -> RewardStats:
        count = self.count + 1
        delta = value - self.mean
        mean = self.mean + delta / count
        return RewardStats(count, mean, self.m2 + delta * (value - mean))

    @property
    def variance(self) -> float:
        """Population variance (numpy's ``var`` with ddof=0)."""
        return self.m2 / self.count if self.count else 0.0


@dataclass(frozen=True, slots=True)
class ArmPosterior:
    """Gaussian belief about one batch size's mean reward (reward = -cost).

    ``param_precision`` and ``reward_precision`` may be ``math.inf``: the
    rewards seen so far are all equal, so a draw returns their mean exactly.
    """

    batch_size: int
    param_mean: float
    param_precision: float
    reward_precision: float
    num_observations: int

    @property
    def scale(self) -> float:
        """Standard deviation of the belief: sqrt(1 / precision)."""
        if self.param_precision == math.inf:
            return 0.0
        return math.sqrt(1.0 / self.param_precision)


@dataclass(frozen=True, slots=True)
class PruningState:
    """Where the pruning walk stands: round, that round's default and candidates.

    ``attempt`` is 1 while a round that converged nowhere is walked again.
    """

    round: int
    default_batch_size: int
    candidates: tuple[int, ...]
    min_cost_of_round: float | None = None
    attempt: int = 0


ROUND_ATTEMPTS = 2  # a round that converges nowhere is walked once more


@dataclass(frozen=True, slots=True)
class DeadEnd:
    """A pruning round that converged nowhere on each of its walks, and what the job does instead.

    The job leaves the pruning stage with ``arms``: the round's candidates
    (each converged in the round before) or, in the first round, the best
    batch size seen so far (the default until anything converged). It keeps
    training; ``message`` says why (the job's read API, the log).
    """

    round: int  # 0-based
    arms: tuple[int, ...]

    @property
    def message(self) -> str:
        served = ", ".join(str(bs) for bs in self.arms)
        return (
            f"No batch size converged in pruning round {self.round + 1}, walked "
            f"{ROUND_ATTEMPTS} times: pruning ended there and the job serves batch size(s) "
            f"{served}. Revisit target_metric, max_epochs or beta_knob if this was not noise."
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """What to dispatch next.

    ``new_arms`` is set only on the request that ends the pruning stage: the
    caller persists those arms and switches the job to the bandit stage.
    ``pruning_round`` (0-based) is set for an Exploration trial; the predictive
    policy's round stop reads it back when the trial reports. ``dead_end``
    comes with ``new_arms`` when pruning ended on a round that converged
    nowhere (:class:`DeadEnd`).
    """

    batch_size: int
    trial_type: TrialType
    new_arms: tuple[ArmPosterior, ...] | None = None
    pruning_round: int | None = None
    dead_end: DeadEnd | None = None  # with new_arms: a round converged nowhere


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer to one epoch report."""

    stop_train: bool
    converged: bool
    cost: float
    message: str
    reason: StopReason

"""The pruning exploration stage (Zeus, section 4.2).

Each round walks the candidate batch sizes outward from that round's default:
first down (default included, descending), then up (ascending). A batch size
that fails to converge ends its direction, since smaller (or larger) ones are
assumed to fare no better. The converged ones are the next round's
candidates, the cheapest of them its default. After the last round the
survivors become the bandit's arms. Under the predictive policy, a round's
survivors that cost more than 1.5 times its cheapest are dropped: neither
explored again nor made arms.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from app.bandit.predictive import survivors
from app.bandit.types import Exploration, JobParams, Policy, PruningState, TrialType


class NoConvergedBatchSizeError(Exception):
    """A pruning round ended with no batch size that reached the target."""

    def __init__(self, round_index: int) -> None:
        super().__init__(
            f"No batch size converged in pruning round {round_index + 1}, so the job cannot "
            "proceed. Revisit batch_sizes, target_metric or max_epochs and register a new job."
        )
        self.round_index = round_index


@dataclass(frozen=True, slots=True)
class PruningStep:
    """The outcome of a walk: either a trial to dispatch, or the final arms."""

    state: PruningState
    batch_size: int | None = None  # None: every round is complete
    trial_type: TrialType | None = None
    arms: tuple[int, ...] = ()


def _directions(candidates: Sequence[int], default: int) -> tuple[list[int], list[int]]:
    ordered = sorted(candidates)
    idx = ordered.index(default)
    return ordered[: idx + 1][::-1], ordered[idx + 1 :]


def pruning_walk(
    params: JobParams,
    explorations: Mapping[int, Sequence[Exploration]],
    *,
    min_cost_batch_size: int,
    start_batch_size: int | None = None,
    never_converged: frozenset[int] = frozenset(),
) -> PruningStep:
    """Find the next pruning trial, or the arms once every round is complete.

    ``explorations`` maps a batch size to its non-Failed Exploration trials in
    trial-number order; its r-th item is that batch size's round-r exploration.
    While a round-r exploration is still running, the walk cannot go past it,
    so it dispatches a Concurrent trial of the cheapest batch size known so far.

    Job groups (app.bandit.groups): ``start_batch_size`` replaces the default
    as the first round's starting point, and a batch size in
    ``never_converged`` with no exploration of its own in a round counts as
    not converged in it, without a trial. The defaults change nothing.

    Raises:
        NoConvergedBatchSizeError: a round ended with nothing converged.
    """
    candidates: tuple[int, ...] = tuple(sorted(params.batch_sizes))
    default = params.default_batch_size if start_batch_size is None else start_batch_size
    for round_index in range(params.num_pruning_rounds):
        state = PruningState(round_index, default, candidates)
        # A round that the group's knowledge alone would leave with nothing
        # converged is walked again without it: the job explores for itself.
        for skipped in (never_converged, frozenset[int]()):
            walked = _walk_round(state, explorations, min_cost_batch_size, skipped)
            if isinstance(walked, PruningStep):
                return walked
            kept, cheapest = walked
            if kept or not skipped:
                break
        if not kept:
            raise NoConvergedBatchSizeError(round_index)
        candidates, default = tuple(sorted(kept)), cheapest
        if params.policy is Policy.PREDICTIVE:
            candidates = survivors(kept)
    final = PruningState(params.num_pruning_rounds, default, candidates)
    return PruningStep(final, arms=candidates)


def _walk_round(
    state: PruningState,
    explorations: Mapping[int, Sequence[Exploration]],
    min_cost_batch_size: int,
    never_converged: frozenset[int],
) -> PruningStep | tuple[dict[int, float], int]:
    """One round: the trial to dispatch, or the converged batch sizes' costs and the cheapest."""
    round_index, default = state.round, state.default_batch_size
    kept: dict[int, float] = {}  # batch size -> its exploration's cost
    cheapest, cheapest_cost = default, math.inf
    for direction in _directions(state.candidates, default):
        for bs in direction:
            history = explorations.get(bs, ())
            if len(history) <= round_index:
                if bs in never_converged:
                    break
                return PruningStep(state, bs, TrialType.EXPLORATION)
            trial = history[round_index]
            if trial.dispatched:
                return PruningStep(state, min_cost_batch_size, TrialType.CONCURRENT)
            if not trial.converged:
                break
            cost = trial.cost if trial.cost is not None else math.inf
            kept[bs] = cost
            if cost < cheapest_cost:
                cheapest, cheapest_cost = bs, cost
    return kept, cheapest

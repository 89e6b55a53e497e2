"""The pruning exploration stage (Zeus, section 4.2).

Each round walks the candidate batch sizes outward from that round's default:
first down (default included, descending), then up (ascending). A batch size
that fails to converge ends its direction, since smaller (or larger) ones are
assumed to fare no better. The converged ones are the next round's
candidates, the cheapest of them its default. After the last round the
survivors become the bandit's arms. Under the predictive policy, a round's
survivors that cost more than 1.5 times its cheapest are dropped: neither
explored again nor made arms.

Where the paper stops for good (a round with nothing converged: every later
request a 409 until someone registers a new job), the walk goes on: the round
is walked once more, then pruning ends with the previous round's survivors
(or the best batch size so far) as the arms (:class:`DeadEnd`). A recurring
job always gets a batch size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from app.bandit.predictive import survivors
from app.bandit.types import (
    ROUND_ATTEMPTS,
    DeadEnd,
    Exploration,
    JobParams,
    Policy,
    PruningState,
    TrialType,
)


@dataclass(frozen=True, slots=True)
class PruningStep:
    """The outcome of a walk: either a trial to dispatch, or the final arms."""

    state: PruningState
    batch_size: int | None = None  # None: every round is complete
    trial_type: TrialType | None = None
    arms: tuple[int, ...] = ()
    dead_end: DeadEnd | None = None  # set when pruning ended on a round that converged nowhere


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
    trial-number order; each walk of a round takes the next one of every batch
    size it visits (without a dead end, a batch size's r-th item is its round-r
    exploration). While an exploration is still running, the walk cannot go
    past it, so it dispatches a Concurrent trial of the cheapest batch size
    known so far.

    A round whose walk converges nowhere is walked again (``ROUND_ATTEMPTS``
    walks in all); if that converges nowhere too, pruning ends there with the
    fallback arms of :class:`DeadEnd` instead of leaving the job without a
    batch size. Where no round converges nowhere, nothing changes: the paper's
    walk.

    Job groups (app.bandit.groups): ``start_batch_size`` replaces the default
    as the first round's starting point, and a batch size in
    ``never_converged`` with no exploration of its own in a walk counts as
    not converged in it, without a trial. The defaults change nothing.
    """
    candidates: tuple[int, ...] = tuple(sorted(params.batch_sizes))
    default = params.default_batch_size if start_batch_size is None else start_batch_size
    taken: dict[int, int] = {}  # explorations each batch size's earlier walks used
    for round_index in range(params.num_pruning_rounds):
        kept: dict[int, float] = {}
        for attempt in range(ROUND_ATTEMPTS):
            state = PruningState(round_index, default, candidates, attempt=attempt)
            # A walk that the group's knowledge alone would leave with nothing
            # converged is walked again without it: the job explores for itself.
            for skipped in (never_converged, frozenset[int]()):
                walked = _walk_round(state, explorations, taken, min_cost_batch_size, skipped)
                if isinstance(walked, PruningStep):
                    return walked
                kept, cheapest, used = walked
                if kept or not skipped:
                    break
            taken = used
            if kept:
                break
        if not kept:
            arms = candidates if round_index > 0 else (min_cost_batch_size,)
            final = PruningState(params.num_pruning_rounds, arms[0], arms)
            return PruningStep(final, arms=arms, dead_end=DeadEnd(round_index, arms))
        candidates, default = tuple(sorted(kept)), cheapest
        if params.policy is Policy.PREDICTIVE:
            candidates = survivors(kept)
    final = PruningState(params.num_pruning_rounds, default, candidates)
    return PruningStep(final, arms=candidates)


def _walk_round(
    state: PruningState,
    explorations: Mapping[int, Sequence[Exploration]],
    taken: Mapping[int, int],
    min_cost_batch_size: int,
    never_converged: frozenset[int],
) -> PruningStep | tuple[dict[int, float], int, dict[int, int]]:
    """One walk of a round: the trial to dispatch, or its outcome.

    The outcome: the converged batch sizes' costs, the cheapest of them, and
    how many explorations each batch size has used after this walk.
    """
    default = state.default_batch_size
    kept: dict[int, float] = {}  # batch size -> its exploration's cost
    used = dict(taken)
    cheapest, cheapest_cost = default, math.inf
    for direction in _directions(state.candidates, default):
        for bs in direction:
            history, index = explorations.get(bs, ()), taken.get(bs, 0)
            if len(history) <= index:
                if bs in never_converged:
                    break
                return PruningStep(state, bs, TrialType.EXPLORATION)
            trial = history[index]
            used[bs] = index + 1
            if trial.dispatched:
                return PruningStep(state, min_cost_batch_size, TrialType.CONCURRENT)
            if not trial.converged:
                break
            cost = trial.cost if trial.cost is not None else math.inf
            kept[bs] = cost
            if cost < cheapest_cost:
                cheapest, cheapest_cost = bs, cost
    return kept, cheapest, used

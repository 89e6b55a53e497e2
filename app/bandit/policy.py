"""The single entry point that picks the next trial, in either stage."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from app.bandit.cost import reward
from app.bandit.gaussian_ts import choose_arm, fit_arm
from app.bandit.groups import GroupKnowledge, never_converged
from app.bandit.pruning import pruning_walk
from app.bandit.types import ArmPosterior, Decision, Exploration, JobParams, TrialType


def initial_arms(
    params: JobParams,
    arm_batch_sizes: Sequence[int],
    explorations: Mapping[int, Sequence[Exploration]],
) -> tuple[ArmPosterior, ...]:
    """Fit each surviving batch size on the costs of all its finished explorations."""
    arms = []
    for bs in sorted(arm_batch_sizes):
        rewards = [
            reward(e.cost)
            for e in explorations.get(bs, ())
            if not e.dispatched and e.cost is not None
        ]
        arms.append(
            fit_arm(
                bs,
                rewards,
                prior_mean=params.mab_prior_mean,
                prior_precision=params.mab_prior_precision,
            )
        )
    return tuple(arms)


def decide(
    params: JobParams,
    *,
    in_bandit_stage: bool,
    min_cost_batch_size: int,
    explorations: Mapping[int, Sequence[Exploration]],
    arms: Sequence[ArmPosterior],
    rng: np.random.Generator | Callable[[], np.random.Generator],
    group: GroupKnowledge | None = None,
    start_batch_size: int | None = None,
) -> Decision:
    """Choose the next trial.

    In the pruning stage ``explorations`` drives the walk; the request that
    finds every round complete fits the arms, returns them in
    ``Decision.new_arms`` and is answered by the bandit. In the bandit stage
    only ``arms`` (ascending) and ``rng`` matter. ``rng`` may be a function
    that makes the generator: it is called only when a draw is due (most
    pruning-stage dispatches draw nothing, and making one costs some 10 us).

    A job of a group passes what the group knows (``group``) and where its
    walk starts (``start_batch_size``, :func:`app.bandit.groups.walk_start`
    at its first dispatch); without them the decision is the paper's.

    A pruning round that converges nowhere does not end the job: the walk
    gives fallback arms (``Decision.dead_end`` says so, :class:`DeadEnd`).
    """
    if not in_bandit_stage:
        step = pruning_walk(
            params,
            explorations,
            min_cost_batch_size=min_cost_batch_size,
            start_batch_size=start_batch_size,
            never_converged=never_converged(group),
        )
        if step.batch_size is not None and step.trial_type is not None:
            explores = step.trial_type is TrialType.EXPLORATION
            return Decision(
                step.batch_size,
                step.trial_type,
                pruning_round=step.state.round if explores else None,
            )
        new_arms = initial_arms(params, step.arms, explorations)
        chosen = choose_arm(new_arms, num_explorations=params.mab_num_explorations, rng=_made(rng))
        return Decision(chosen, TrialType.MAB, new_arms, dead_end=step.dead_end)
    chosen = choose_arm(arms, num_explorations=params.mab_num_explorations, rng=_made(rng))
    return Decision(chosen, TrialType.MAB)


def _made(rng: np.random.Generator | Callable[[], np.random.Generator]) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else rng()

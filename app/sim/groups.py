"""One recurring job across GPU types: each recurrence lands on one of several GPUs.

A *group replay* registers one job per GPU type (as a Zeus deployment must:
the GPU type is fixed per job) and plays recurrences that each land on a GPU
drawn with the seed. With ``sharing=group`` the jobs form one job group
(docs/SPEC.md section 12) and share what each batch size needs to converge;
with ``separate`` they learn alone, as today. ``before`` plays recurrences on
given GPUs first, uncounted: a warm start for the GPUs that join later.

Every counted recurrence is kept (its GPU, the batch size of each try, its
cost and that GPU's oracle cost: the expected cost per recurrence of the
best single batch size on it), so any summary can be recomputed; the
headline is the mean over recurrences of cost / oracle cost.

Epochs to the target are the same on every GPU in the traces, by
construction. ``perturb`` makes them differ: ``scale`` multiplies each GPU's
reach epochs of each batch size by a factor drawn log-uniformly in
[0.8, 1.25], ``shift`` adds one epoch on some GPUs and takes one off on
others (drawn per GPU), so that the group's knowledge is only approximately
right.
"""

from __future__ import annotations

import math
import secrets
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any

import numpy as np

from app.sim.protocol import Engine, EngineError
from app.sim.replay import MAX_TRIES, job_spec, train
from app.sim.results import ReplaySettings
from app.sim.traces import GPUS, Case, PathSampler, Workload, build_case, expected_costs

DEFAULT_RECURRENCES = 40
SCALE_RANGE = (0.8, 1.25)


class Sharing(StrEnum):
    """Whether the jobs of the GPU types form one job group."""

    GROUP = "group"
    SEPARATE = "separate"  # one job per GPU type, each learning alone (today)


class Perturbation(StrEnum):
    """How epochs to the target differ between GPUs (none: as in the traces)."""

    NONE = "none"
    SCALE = "scale"  # x[0.8, 1.25] per GPU and batch size
    SHIFT = "shift"  # +1 or -1 epoch per GPU, every batch size


@dataclass(frozen=True, slots=True)
class GroupPlan:
    """Which GPUs the recurrences land on, and how the jobs learn."""

    gpus: tuple[str, ...]
    sharing: Sharing = Sharing.GROUP
    before: tuple[tuple[str, int], ...] = ()  # uncounted recurrences first, in order
    recurrences: int = DEFAULT_RECURRENCES  # counted ones
    perturb: Perturbation = Perturbation.NONE


@dataclass(frozen=True, slots=True)
class GroupRecurrence:
    """One counted recurrence: where it ran, what it tried, what it cost."""

    index: int  # 1-based among the counted ones
    gpu: str
    batch_sizes: tuple[int, ...]  # of each try, in order
    converged: tuple[bool, ...]  # of each try
    cost: float  # every try's cost
    oracle_cost: float  # that GPU's oracle: expected cost per recurrence of its best batch size

    @property
    def over_oracle(self) -> float:
        return self.cost / self.oracle_cost


@dataclass(frozen=True)
class GroupResult:
    """The outcome of one group replay."""

    workload: Workload
    settings: ReplaySettings
    plan: GroupPlan
    oracle_batch_sizes: Mapping[str, int]
    recurrences: tuple[GroupRecurrence, ...]
    error: str | None = None

    @property
    def mean_over_oracle(self) -> float | None:
        """Mean over counted recurrences of cost / that GPU's oracle cost."""
        if not self.recurrences:
            return None
        return statistics.fmean(r.over_oracle for r in self.recurrences)

    def to_dict(self) -> dict[str, Any]:
        plan = asdict(self.plan)
        plan["before"] = [f"{gpu}:{n}" for gpu, n in self.plan.before]
        return {
            "workload": self.workload.name,
            "dataset": self.workload.dataset,
            "settings": asdict(self.settings),
            "plan": plan,
            "oracle_batch_sizes": dict(self.oracle_batch_sizes),
            "mean_cost_over_oracle": self.mean_over_oracle,
            "error": self.error,
            "recurrences": [
                {**asdict(r), "batch_sizes": list(r.batch_sizes), "converged": list(r.converged)}
                for r in self.recurrences
            ],
        }


def perturbed(case: Case, how: Perturbation, rng: np.random.Generator) -> Case:
    """``case`` with its reach epochs changed as ``how`` says (draws from ``rng``)."""
    if how is Perturbation.NONE:
        return case
    low, high = math.log(SCALE_RANGE[0]), math.log(SCALE_RANGE[1])
    shift = int(rng.choice([-1, 1]))
    paths = {}
    for bs in case.batch_sizes:
        factor = math.exp(rng.uniform(low, high))
        paths[bs] = tuple(
            None
            if e is None
            else max(1, round(e * factor) if how is Perturbation.SCALE else e + shift)
            for e in case.paths[bs]
        )
    return replace(case, paths=paths)


def group_cases(
    workload: Workload, plan: GroupPlan, *, seed: int, power_limit: int | None = None
) -> dict[str, Case]:
    """One case per GPU of the plan (its ``before`` GPUs included), perturbed as it says."""
    rng = np.random.default_rng([seed, 0x9E0])  # apart from the schedule's and paths' draws
    gpus = dict.fromkeys([*(gpu for gpu, _ in plan.before), *plan.gpus])
    return {
        gpu: perturbed(build_case(workload, gpu, power_limit=power_limit), plan.perturb, rng)
        for gpu in gpus
    }


def schedule(plan: GroupPlan, seed: int) -> list[tuple[str, bool]]:
    """Each recurrence's GPU and whether it counts: the ``before`` ones, then seeded draws."""
    rng = np.random.default_rng(seed)
    first = [(gpu, False) for gpu, n in plan.before for _ in range(n)]
    drawn = rng.integers(len(plan.gpus), size=plan.recurrences)
    return first + [(plan.gpus[int(i)], True) for i in drawn]


async def replay_group(
    engine: Engine,
    workload: Workload,
    settings: ReplaySettings,
    plan: GroupPlan,
    *,
    power_limit: int | None = None,
    on_recurrence: Callable[[int], None] | None = None,
) -> GroupResult:
    """Register one job per GPU (one group, or none) and play the plan's recurrences.

    The group's name is random, so that replays sharing a server never share
    a group; decisions never read the name. An engine error ends the replay
    early; the result says why.
    """
    cases = group_cases(workload, plan, seed=settings.seed, power_limit=power_limit)
    group = f"sim-{workload.dataset}-{secrets.token_hex(4)}"
    # One path stream per GPU, the same in both sharing modes.
    samplers = {
        gpu: PathSampler(case, settings.seed * len(GPUS) + GPUS.index(gpu))
        for gpu, case in cases.items()
    }
    oracle = {}
    for gpu, case in cases.items():
        costs = expected_costs(case, settings.eta_knob)
        oracle[gpu] = min(case.batch_sizes, key=lambda bs: (costs[bs], bs))
    oracle_cost = {
        gpu: expected_costs(c, settings.eta_knob)[oracle[gpu]] for gpu, c in cases.items()
    }
    played: list[GroupRecurrence] = []
    error = None
    try:
        jobs = {}
        for gpu, case in cases.items():
            spec = job_spec(case, settings)
            if plan.sharing is Sharing.GROUP:
                spec = spec.model_copy(update={"group": group})
            jobs[gpu] = await engine.register(spec)
        for done, (gpu, counted) in enumerate(schedule(plan, settings.seed), start=1):
            tries = await _recurrence(engine, cases[gpu], jobs[gpu], settings, samplers[gpu])
            if counted:
                played.append(
                    GroupRecurrence(
                        len(played) + 1, gpu, tuple(bs for bs, _, _ in tries),
                        tuple(c for _, c, _ in tries), sum(cost for _, _, cost in tries),
                        oracle_cost[gpu],
                    )
                )  # fmt: skip
            if on_recurrence is not None:
                on_recurrence(done)
    except EngineError as exc:
        error = f"stopped after {len(played)} counted recurrence(s): {exc}"
    return GroupResult(workload, settings, plan, oracle, tuple(played), error)


async def _recurrence(
    engine: Engine, case: Case, job_id: str, settings: ReplaySettings, sampler: PathSampler
) -> list[tuple[int, bool, float]]:
    """Tries until one converges (at most 20): (batch size, converged, cost) of each."""
    tries = []
    for _ in range(MAX_TRIES):
        trial = await engine.next_trial(job_id)
        reach = sampler.sample(trial.batch_size)
        epochs, converged = await train(engine, case, trial, reach, settings.metric_curve)
        tries.append(
            (
                trial.batch_size,
                converged,
                case.run_cost(trial.batch_size, epochs, settings.eta_knob),
            )
        )
        if converged:
            break
    return tries


def parse_before(values: Sequence[str], known: Sequence[str]) -> tuple[tuple[str, int], ...]:
    """``GPU:N`` options as (gpu, n) pairs; ValueError with a message when malformed."""
    pairs = []
    for value in values:
        gpu, sep, count = value.partition(":")
        gpu = gpu.strip().lower()
        if not sep or gpu not in known or not count.strip().isdigit() or int(count) < 1:
            raise ValueError(
                f"--before {value!r}: expected GPU:N with GPU one of {', '.join(known)} and N >= 1."
            )
        pairs.append((gpu, int(count)))
    return tuple(pairs)

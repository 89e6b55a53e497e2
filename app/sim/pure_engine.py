"""An in-memory twin of the service: the same decisions from ``app.bandit`` alone.

It keeps what the service keeps per job (trials, min cost, stage, arms, one
seeded generator) and applies the same rules (SPEC sections 3 to 6):

- a trial that ends Succeeded is applied through :func:`app.bandit.learn`, the
  service's own function: ``min_cost`` / ``min_cost_batch_size`` move only on a
  converged, cheaper trial, running statistics, and the arm's refit;
- the pruning walk sees, per batch size, its non-Failed Exploration trials in
  trial order; the request that completes the walk switches to the bandit
  (``decide(...).new_arms``) and is answered by it;
- in the bandit stage, every trial that ends Succeeded refits its batch size's
  arm, if it is one: from running statistics of all that batch size's
  Succeeded trials (any type, either stage) when ``window_size`` is 0, from
  its last ``window_size`` ones otherwise;
- a seeded job keeps one ``numpy.random.default_rng(mab_seed)`` for its life;
- a job's ``policy`` (None: the engine's default, like BSO_DEFAULT_POLICY) is
  part of its spec; a registration without one matches the job whatever its
  policy, as the service's does. Under ``predictive`` a report is judged by
  ``judge_report_predictive``: each running trial keeps its previous report
  and its pruning round, each batch size the fewest epochs a converged trial
  of it needed, and a trial stopped by a prediction counts with its predicted
  cost (in the pruning walk's costs and the arms alike);
- a job's ``group`` (None: none, or its prefix with ``group_by_prefix``, like
  BSO_GROUP_BY_PREFIX) shares per batch size what its runs needed to converge
  with the group's other jobs: its first dispatch fixes where its walk starts
  (:func:`app.bandit.walk_start`), the walk and the reports read the group
  (:func:`app.bandit.judge_member`), and every final report adds to the
  group's statistics (:func:`app.bandit.group_lesson`). A job whose target
  metric, direction or max epochs differ from its group's is refused (409).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from app.bandit import (
    ArmPosterior,
    DeadEnd,
    Exploration,
    GroupBatchSize,
    GroupKnowledge,
    JobParams,
    LastReport,
    Policy,
    RewardStats,
    TrialType,
    Verdict,
    decide,
    group_lesson,
    judge_member,
    judge_report,
    judge_report_predictive,
    learn,
    reward,
    sibling_best,
    walk_start,
)
from app.bandit.types import TrialStatus
from app.schemas import JobSpec
from app.sim.protocol import EngineError, ReportAnswer, TrialId


@dataclass(slots=True)
class _Trial:
    number: int
    batch_size: int
    trial_type: TrialType
    status: TrialStatus = TrialStatus.DISPATCHED
    cost: float | None = None  # predictive: the predicted cost when a prediction stopped it
    converged: bool | None = None
    pruning_round: int | None = None  # of an Exploration
    last_report: LastReport | None = None  # predictive: the previous report


@dataclass(slots=True)
class _Job:
    spec: JobSpec
    params: JobParams
    rng: np.random.Generator
    min_cost_batch_size: int
    min_cost: float | None = None
    in_bandit_stage: bool = False
    arms: dict[int, ArmPosterior] = field(default_factory=dict)
    trials: list[_Trial] = field(default_factory=list)
    stats: defaultdict[int, RewardStats] = field(default_factory=lambda: defaultdict(RewardStats))
    rewards: defaultdict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    fewest_epochs: dict[int, int] = field(default_factory=dict)  # predictive: per batch size
    group: str | None = None
    start_batch_size: int | None = None  # a group's job: set by its first dispatch
    predicted: dict[int, float] = field(default_factory=dict)  # a group's job: per batch size
    dead_end: DeadEnd | None = None  # pruning ended on a round that converged nowhere

    def typical_cost(self) -> float | None:
        """The mean recorded cost of the cheapest batch size's trials (predictive's reference)."""
        stats = self.stats.get(self.min_cost_batch_size)
        if self.min_cost is None or stats is None or stats.count == 0:
            return None
        return -stats.mean

    def explorations(self) -> dict[int, list[Exploration]]:
        by_batch_size: dict[int, list[Exploration]] = defaultdict(list)
        for t in self.trials:
            if t.trial_type is TrialType.EXPLORATION and t.status is not TrialStatus.FAILED:
                by_batch_size[t.batch_size].append(
                    Exploration(
                        t.number,
                        t.batch_size,
                        dispatched=t.status is TrialStatus.DISPATCHED,
                        converged=t.converged,
                        cost=t.cost,
                    )
                )
        return by_batch_size


@dataclass(slots=True)
class _Group:
    """What a group's jobs agree on, and the statistics they share."""

    target_metric: float
    higher_is_better_metric: bool
    max_epochs: int
    stats: defaultdict[int, GroupBatchSize] = field(
        default_factory=lambda: defaultdict(GroupBatchSize)
    )


class PureEngine:
    """The service's semantics in memory: no HTTP, no database, fast for sweeps."""

    def __init__(
        self, *, default_policy: Policy = Policy.ZEUS, group_by_prefix: bool = False
    ) -> None:
        self._jobs: dict[str, _Job] = {}
        self._groups: dict[str, _Group] = {}
        self._ids = itertools.count(1)
        self._default_policy = default_policy
        self._group_by_prefix = group_by_prefix

    async def register(self, spec: JobSpec) -> str:
        job_id = spec.job_id or f"{spec.job_id_prefix}-{next(self._ids):08x}"
        existing = self._jobs.get(job_id)
        if existing is not None:
            stored = existing.spec
            if spec.policy is None:  # none given: the stored one, as the service does
                spec = spec.model_copy(update={"policy": stored.policy})
            if spec.group is None:
                spec = spec.model_copy(update={"group": stored.group})
            if stored.model_dump() != spec.model_dump():
                raise EngineError(409, f"Job {job_id} exists with a different spec.")
            return job_id
        group = spec.group or (spec.job_id_prefix if self._group_by_prefix else None)
        spec = spec.model_copy(update={"policy": spec.policy or self._default_policy,
                                       "group": group})  # fmt: skip
        if group is not None:
            self._join(group, spec)
        seed = spec.mab_seed
        self._jobs[job_id] = _Job(
            spec=spec,
            params=spec.algorithm_params(),
            rng=np.random.default_rng(seed) if seed is not None else np.random.default_rng(),
            min_cost_batch_size=spec.default_batch_size,
            group=group,
        )
        return job_id

    def _join(self, name: str, spec: JobSpec) -> None:
        """Create the group, or check that the job agrees with it (else 409)."""
        terms = (spec.target_metric, spec.higher_is_better_metric, spec.max_epochs)
        group = self._groups.setdefault(name, _Group(*terms))
        if (group.target_metric, group.higher_is_better_metric, group.max_epochs) != terms:
            raise EngineError(409, f"Job group {name!r} has a different definition of converged.")

    def _knowledge(self, job: _Job) -> GroupKnowledge | None:
        if job.group is None:
            return None
        return GroupKnowledge(dict(self._groups[job.group].stats), dict(job.predicted))

    def _walk_start(self, job: _Job) -> int:
        """Rule 3, at a group job's first dispatch: its siblings in job_id order."""
        siblings = [
            (len(other.trials), other.min_cost_batch_size if other.min_cost is not None else None)
            for job_id, other in sorted(self._jobs.items())
            if other.group == job.group and other is not job
        ]
        return walk_start(job.params, sibling_best(siblings))

    def _job(self, job_id: str) -> _Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise EngineError(404, f"Unknown job {job_id}.")
        return job

    def _trial(self, trial: TrialId) -> tuple[_Job, _Trial]:
        job = self._job(trial.job_id)
        if not 1 <= trial.trial_number <= len(job.trials):
            raise EngineError(404, f"Unknown trial {trial.trial_number} of job {trial.job_id}.")
        found = job.trials[trial.trial_number - 1]
        if found.batch_size != trial.batch_size:
            raise EngineError(
                400, f"Trial {found.number} was dispatched with batch size {found.batch_size}."
            )
        return job, found

    async def next_trial(self, job_id: str) -> TrialId:
        job = self._job(job_id)
        if job.group is not None and not job.trials:
            job.start_batch_size = self._walk_start(job)
        decision = decide(
            job.params,
            in_bandit_stage=job.in_bandit_stage,
            min_cost_batch_size=job.min_cost_batch_size,
            explorations=job.explorations(),
            arms=[job.arms[bs] for bs in sorted(job.arms)],
            rng=job.rng,
            group=self._knowledge(job),
            start_batch_size=job.start_batch_size,
        )
        if decision.dead_end is not None:
            job.dead_end = decision.dead_end
        if decision.new_arms is not None:
            job.arms = {arm.batch_size: arm for arm in decision.new_arms}
            job.in_bandit_stage = True
        trial = _Trial(
            len(job.trials) + 1,
            decision.batch_size,
            decision.trial_type,
            pruning_round=decision.pruning_round,
        )
        job.trials.append(trial)
        return TrialId(job_id, trial.batch_size, trial.number)

    async def report(
        self, trial: TrialId, *, time: float, energy: float, metric: float, current_epoch: int
    ) -> ReportAnswer:
        job, found = self._trial(trial)
        if found.status is TrialStatus.SUCCEEDED:
            return ReportAnswer(True, bool(found.converged), "The trial already ended.")
        if found.status is TrialStatus.FAILED:
            return ReportAnswer(True, False, "The trial was ended without a result.")
        group = self._knowledge(job)
        if group is not None:
            verdict, recorded = self._judge_member(job, found, group, time, energy, metric,
                                                   current_epoch)  # fmt: skip
        else:
            verdict, recorded = self._judge(job, found, time, energy, metric, current_epoch)
        if verdict.stop_train:
            self._succeed(job, found, verdict, recorded)
            if job.group is not None:
                stats = self._groups[job.group].stats
                bs = found.batch_size
                stats[bs] = group_lesson(stats[bs], verdict, current_epoch=current_epoch)
        return ReportAnswer(verdict.stop_train, verdict.converged, verdict.message)

    @staticmethod
    def _judge_member(
        job: _Job,
        trial: _Trial,
        group: GroupKnowledge,
        time: float,
        energy: float,
        metric: float,
        current_epoch: int,
    ) -> tuple[Verdict, float]:
        """A group's job: its policy with the group's knowledge (app.bandit.judge_member)."""
        bs = trial.batch_size
        judged = judge_member(
            job.params, min_cost=job.min_cost, batch_size=bs, time=time, energy=energy,
            metric=metric, current_epoch=current_epoch, last=trial.last_report,
            fewest_epochs=job.fewest_epochs, pruning_round=trial.pruning_round, group=group,
            typical_cost=job.typical_cost(),
        )  # fmt: skip
        trial.last_report = judged.last_report
        if judged.fewest_epochs is not None:
            job.fewest_epochs[bs] = judged.fewest_epochs
        if judged.verdict.stop_train and judged.predicted_cost is not None:
            job.predicted[bs] = judged.predicted_cost
        return judged.verdict, judged.recorded_cost

    @staticmethod
    def _judge(
        job: _Job, trial: _Trial, time: float, energy: float, metric: float, current_epoch: int
    ) -> tuple[Verdict, float]:
        """The verdict on a report, and the cost the trial counts as if it stops."""
        bs = trial.batch_size
        if job.params.policy is not Policy.PREDICTIVE:
            verdict = judge_report(
                job.params, min_cost=job.min_cost, batch_size=bs, time=time, energy=energy,
                metric=metric, current_epoch=current_epoch,
            )  # fmt: skip
            return verdict, verdict.cost
        judged = judge_report_predictive(
            job.params, min_cost=job.min_cost, batch_size=bs, time=time, energy=energy,
            metric=metric, current_epoch=current_epoch, last=trial.last_report,
            fewest_epochs=job.fewest_epochs, pruning_round=trial.pruning_round,
            typical_cost=job.typical_cost(),
        )  # fmt: skip
        trial.last_report = judged.last_report
        if judged.fewest_epochs is not None:
            job.fewest_epochs[bs] = judged.fewest_epochs
        return judged.verdict, judged.recorded_cost

    @staticmethod
    def _succeed(job: _Job, trial: _Trial, verdict: Verdict, recorded: float) -> None:
        trial.status = TrialStatus.SUCCEEDED
        trial.cost, trial.converged = recorded, verdict.converged
        bs = trial.batch_size
        refit = job.in_bandit_stage and bs in job.arms
        lesson = learn(
            job.params, verdict, batch_size=bs, min_cost=job.min_cost,
            min_cost_batch_size=job.min_cost_batch_size, stats=job.stats[bs], refit=refit,
            earlier_rewards=job.rewards[bs], recorded_cost=recorded,
        )  # fmt: skip
        job.min_cost, job.min_cost_batch_size = lesson.min_cost, lesson.min_cost_batch_size
        job.stats[bs] = lesson.stats
        job.rewards[bs].append(reward(recorded))
        if lesson.arm is not None:
            job.arms[bs] = lesson.arm

    async def end_trial(self, trial: TrialId) -> None:
        _, found = self._trial(trial)
        if found.status is TrialStatus.DISPATCHED:
            found.status = TrialStatus.FAILED

    def arms(self, job_id: str) -> tuple[ArmPosterior, ...]:
        """The job's arms in ascending batch size (empty in the pruning stage)."""
        job = self._job(job_id)
        return tuple(job.arms[bs] for bs in sorted(job.arms))

    def min_cost(self, job_id: str) -> float | None:
        """The cheapest converged trial's cost so far."""
        return self._job(job_id).min_cost

    def dead_end(self, job_id: str) -> DeadEnd | None:
        """Why the job's pruning ended early, if a round converged nowhere."""
        return self._job(job_id).dead_end

    def dead_ends(self) -> dict[str, DeadEnd]:
        """Every job whose pruning ended on a round that converged nowhere (SPEC 5, rule 4)."""
        return {job_id: j.dead_end for job_id, j in self._jobs.items() if j.dead_end is not None}

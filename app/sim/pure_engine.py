"""An in-memory twin of the service: the same decisions from ``app.bandit`` alone.

It keeps what the service keeps per job (trials, min cost, stage, arms, one
seeded generator) and applies the same rules (SPEC sections 3 to 6):

- ``min_cost`` / ``min_cost_batch_size`` move only on a converged, cheaper trial;
- the pruning walk sees, per batch size, its non-Failed Exploration trials in
  trial order; the request that completes the walk switches to the bandit
  (``decide(...).new_arms``) and is answered by it;
- in the bandit stage, every trial that ends Succeeded refits its batch size's
  arm, if it is one: from running statistics of all that batch size's
  Succeeded trials (any type, either stage) when ``window_size`` is 0, from
  its last ``window_size`` ones otherwise;
- a seeded job keeps one ``numpy.random.default_rng(mab_seed)`` for its life;
- a job's ``policy`` (None: the engine's default, like BSO_DEFAULT_POLICY) is
  part of its spec. Under ``predictive`` a report is judged by
  ``judge_report_predictive``: each running trial keeps its previous report
  and its pruning round, each batch size the fewest epochs a converged trial
  of it needed, and a trial stopped by a prediction counts with its predicted
  cost (in the pruning walk's costs and the arms alike).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field, replace

import numpy as np

from app.bandit import (
    ArmPosterior,
    Exploration,
    JobParams,
    LastReport,
    NoConvergedBatchSizeError,
    Policy,
    RewardStats,
    TrialType,
    Verdict,
    decide,
    fit_arm,
    fit_arm_from_stats,
    judge_report,
    judge_report_predictive,
    reward,
)
from app.bandit.types import TrialStatus
from app.sim.engines import EngineError, JobSpec, ReportAnswer, TrialId


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

    def refit(self, batch_size: int) -> None:
        prior = {
            "prior_mean": self.params.mab_prior_mean,
            "prior_precision": self.params.mab_prior_precision,
        }
        window = self.params.window_size
        self.arms[batch_size] = (
            fit_arm_from_stats(batch_size, self.stats[batch_size], **prior)
            if window == 0
            else fit_arm(batch_size, self.rewards[batch_size][-window:], **prior)
        )


class PureEngine:
    """The service's semantics in memory: no HTTP, no database, fast for sweeps."""

    def __init__(self, *, default_policy: Policy = Policy.ZEUS) -> None:
        self._jobs: dict[str, _Job] = {}
        self._ids = itertools.count(1)
        self._default_policy = default_policy

    async def register(self, spec: JobSpec) -> str:
        spec = replace(spec, policy=spec.policy or self._default_policy)
        job_id = spec.job_id or f"{spec.job_id_prefix}-{next(self._ids):08x}"
        existing = self._jobs.get(job_id)
        if existing is not None:
            if existing.spec != spec:
                raise EngineError(409, f"Job {job_id} exists with a different spec.")
            return job_id
        seed = spec.mab_seed
        self._jobs[job_id] = _Job(
            spec=spec,
            params=spec.params(),
            rng=np.random.default_rng(seed) if seed is not None else np.random.default_rng(),
            min_cost_batch_size=spec.default_batch_size,
        )
        return job_id

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
        try:
            decision = decide(
                job.params,
                in_bandit_stage=job.in_bandit_stage,
                min_cost_batch_size=job.min_cost_batch_size,
                explorations=job.explorations(),
                arms=[job.arms[bs] for bs in sorted(job.arms)],
                rng=job.rng,
            )
        except NoConvergedBatchSizeError as error:
            raise EngineError(409, str(error)) from error
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
        verdict, recorded = self._judge(job, found, time, energy, metric, current_epoch)
        if verdict.stop_train:
            self._succeed(job, found, verdict, recorded)
        return ReportAnswer(verdict.stop_train, verdict.converged, verdict.message)

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
        if verdict.converged and (job.min_cost is None or verdict.cost < job.min_cost):
            job.min_cost, job.min_cost_batch_size = verdict.cost, bs
        job.stats[bs] = job.stats[bs].add(reward(recorded))
        job.rewards[bs].append(reward(recorded))
        if job.in_bandit_stage and bs in job.arms:
            job.refit(bs)

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

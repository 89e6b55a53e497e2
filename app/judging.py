"""Judging a report: the verdict under the job's policy, and the answers it makes.

Pure functions of what the report's read returned (app/service.py runs the
reads and the writes), but :func:`group_knowledge`, one read of a group's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Connection

from app import bandit
from app.bandit import (
    FailureReason,
    GroupKnowledge,
    JobParams,
    LastReport,
    Lease,
    Policy,
    TrialStatus,
    Verdict,
)
from app.schemas import ReportResponse, TrainingResult, TrialRead
from app.store import groups, rows
from app.store.trials import TrialState


def answer_for_ended(trial: TrialRead) -> ReportResponse:
    """A report on an ended trial changes nothing; a retry gets the same answer."""
    if trial.status == TrialStatus.SUCCEEDED:
        return ReportResponse(
            stop_train=True,
            converged=bool(trial.converged),
            message=f"The result of trial {trial.trial_number} was already reported.",
        )
    if trial.failure_reason == FailureReason.LEASE_EXPIRED:
        return ReportResponse(
            stop_train=True,
            converged=False,
            message=f"Trial {trial.trial_number}'s lease expired: no report arrived within "
            "the lease (BSO_TRIAL_LEASE_S), so it was marked Failed and this result is not "
            "recorded. Get a new trial from GET /jobs/batch_size.",
        )
    return ReportResponse(
        stop_train=True,
        converged=False,
        message=f"Trial {trial.trial_number} was ended without a result.",
    )


@dataclass(frozen=True, slots=True)
class Judgement:
    """A verdict, and what the job's policy keeps of it.

    ``recorded_cost`` is what the trial counts as if it ends (a predictive
    stop: its predicted cost); ``last_report`` is what a predictive job's
    running trial keeps for its next report (None: nothing to keep, a zeus
    job); ``min_converged_epochs`` is the batch size's, this report included.
    """

    params: JobParams
    verdict: Verdict
    recorded_cost: float
    last_report: LastReport | None
    min_converged_epochs: int | None
    predicted_cost: float | None = None  # a group's job: recorded when the trial ends


def group_knowledge(conn: Connection, state: TrialState, trial: TrialRead) -> GroupKnowledge | None:
    """What a group's job reads from its group to judge a report (None: no group)."""
    if state.job.group is None or trial.status != TrialStatus.DISPATCHED:
        return None
    return groups.group_knowledge(
        conn, state.job.group, state.job.job_id, from_batch_size=trial.batch_size
    )


def judge(
    state: TrialState,
    trial: TrialRead,
    result: TrainingResult,
    group: GroupKnowledge | None = None,
) -> Judgement:
    job, params = state.job, rows.job_params(state.job)
    if group is not None:
        member = bandit.judge_member(
            params, min_cost=job.min_cost, batch_size=trial.batch_size, time=result.time,
            energy=result.energy, metric=result.metric, current_epoch=result.current_epoch,
            last=state.last_report, fewest_epochs=state.fewest_epochs,
            pruning_round=state.pruning_round, group=group, typical_cost=state.typical_cost,
        )  # fmt: skip
        epochs = member.fewest_epochs
        if params.policy is not Policy.PREDICTIVE:
            epochs = state.min_converged_epochs
        return Judgement(
            params, member.verdict, member.recorded_cost, member.last_report, epochs,
            member.predicted_cost,
        )  # fmt: skip
    if params.policy is not Policy.PREDICTIVE:
        verdict = bandit.judge_report(
            params, min_cost=job.min_cost, batch_size=trial.batch_size, time=result.time,
            energy=result.energy, metric=result.metric, current_epoch=result.current_epoch,
        )  # fmt: skip
        return Judgement(params, verdict, verdict.cost, None, state.min_converged_epochs)
    judged = bandit.judge_report_predictive(
        params, min_cost=job.min_cost, batch_size=trial.batch_size, time=result.time,
        energy=result.energy, metric=result.metric, current_epoch=result.current_epoch,
        last=state.last_report, fewest_epochs=state.fewest_epochs,
        pruning_round=state.pruning_round, typical_cost=state.typical_cost,
    )  # fmt: skip
    return Judgement(
        params, judged.verdict, judged.recorded_cost, judged.last_report, judged.fewest_epochs
    )


def keep_training(verdict: Verdict) -> ReportResponse:
    return ReportResponse(stop_train=False, converged=False, message=verdict.message)


def was_due(state: TrialState, lease: Lease, now: datetime) -> bool:
    """The read saw a Dispatched trial whose lease renewal was due."""
    return (
        state.trial is not None
        and state.trial.status == TrialStatus.DISPATCHED
        and state.lease_renewed_at is not None
        and lease.renewal_due(state.lease_renewed_at, now)
    )


def group_result(
    state: TrialState, judged: Judgement, result: TrainingResult
) -> groups.GroupResult | None:
    """What a final report of a group's job adds to its group (None: no group)."""
    if state.job.group is None:
        return None
    verdict = judged.verdict
    return groups.GroupResult(
        state.job.group,
        converged=verdict.converged,
        exhausted=verdict.reason is bandit.StopReason.MAX_EPOCHS,
        epochs=result.current_epoch,
        predicted_cost=judged.predicted_cost,
    )

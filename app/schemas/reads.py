"""Read models: what the read API (/jobs, /trials, /groups, probes) and the dashboard show.

Not part of Zeus's wire format: these are ours, documented in docs/http-api.md.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.bandit import FailureReason, Policy, Stage, TrialStatus, TrialType
from app.schemas.wire import JOB_SPEC_EXAMPLE, CreatedJob

Precision = Annotated[
    float | None,
    Field(
        description="Precision (1 / variance). null means infinite: every reward observed "
        "so far was the same, so a draw returns the mean exactly."
    ),
]


TRIAL_EXAMPLE: dict[str, Any] = {
    "job_id": "mnist-nightly",
    "trial_number": 1,
    "batch_size": 128,
    "type": "Exploration",
    "status": "Succeeded",
    "start_timestamp": "2026-11-28T01:00:00Z",
    "end_timestamp": "2026-11-28T01:04:00Z",
    "time": 241.0,
    "energy": 60500.0,
    "cost": 66400.0,
    "converged": True,
    "failure_reason": None,
    "lease_expires_at": None,
}


class PruningProgress(BaseModel):
    """Where the pruning stage stands."""

    round: int = Field(description="0-based round being explored.")
    default_batch_size: int = Field(description="The round's starting batch size.")
    candidates: list[int] = Field(description="Batch sizes still in the running.")
    walk: int = Field(
        default=1,
        description="1; 2 while a round whose first walk converged nowhere is walked again.",
    )


class PruningDeadEnd(BaseModel):
    """A pruning round that converged nowhere on both its walks, and what the job did instead."""

    round: int = Field(description="0-based round that converged nowhere.")
    batch_sizes: list[int] = Field(description="The arms the job went on with.")
    message: str


class JobRead(CreatedJob):
    """A job's configuration and learning state."""

    stage: Stage = Field(strict=False)  # a response: the stored text is fine
    min_cost: float | None = Field(description="Cheapest converged cost so far.")
    min_cost_batch_size: int = Field(description="Its batch size (the default until then).")
    exploration: PruningProgress | None = Field(
        description="The current pruning round; null in the bandit stage."
    )
    pruning_dead_end: PruningDeadEnd | None = Field(
        default=None,
        description="Set when pruning ended on a round that converged nowhere: the job went "
        "on with fallback arms instead of stopping (SPEC section 5, rule 4).",
    )
    num_trials: int = Field(description="Trials dispatched so far.")
    created_at: datetime
    updated_at: datetime

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **JOB_SPEC_EXAMPLE,
                    "stage": "Pruning",
                    "min_cost": 66400.0,
                    "min_cost_batch_size": 128,
                    "exploration": {"round": 0, "default_batch_size": 128,
                                    "candidates": [32, 64, 128, 256]},
                    "num_trials": 2,
                    "created_at": "2026-11-28T01:00:00Z",
                    "updated_at": "2026-11-28T01:04:00Z",
                }
            ]
        }
    )  # fmt: skip


JOB_SUMMARY_EXAMPLE: dict[str, Any] = {
    "job_id": "mnist-nightly",
    "job_id_prefix": "mnist",
    "stage": "MAB",
    "policy": "zeus",
    "min_cost": 61250.0,
    "min_cost_batch_size": 128,
    "num_trials": 14,
    "created_at": "2026-11-20T01:00:00Z",
}


class JobSummary(BaseModel):
    """A job in a listing."""

    job_id: str
    job_id_prefix: str
    stage: Stage
    policy: Policy
    group: str | None = Field(default=None, description="Its job group; null: none.")
    min_cost: float | None
    min_cost_batch_size: int
    num_trials: int
    created_at: datetime

    model_config = ConfigDict(json_schema_extra={"examples": [JOB_SUMMARY_EXAMPLE]})


class JobPage(BaseModel):
    """A page of jobs, ordered by job_id."""

    items: list[JobSummary]
    next_after: str | None = Field(
        description="Pass as `after` for the next page; null at the end."
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"items": [JOB_SUMMARY_EXAMPLE], "next_after": "mnist-nightly"}
            ]
        }
    )  # fmt: skip


class TrialRead(BaseModel):
    """One trial and, once it Succeeded, its result."""

    job_id: str
    trial_number: int
    batch_size: int
    type: TrialType
    status: TrialStatus
    start_timestamp: datetime
    end_timestamp: datetime | None
    time: float | None
    energy: float | None
    cost: float | None
    converged: bool | None
    failure_reason: FailureReason | None = Field(
        default=None,
        description="Why a Failed trial failed: `Ended` by PATCH /trials before a final "
        "report, or `LeaseExpired` (no dispatch or report within BSO_TRIAL_LEASE_S). "
        "Null otherwise, and for trials that failed before reasons were kept.",
    )
    lease_expires_at: datetime | None = Field(
        default=None,
        description="When a Dispatched trial's lease runs out unless a report renews it "
        "(reports renew it at most once a minute, so this may lag the last report by up "
        "to min(lease/20, 60 s)). Null when the trial is not Dispatched or leases are off.",
    )

    model_config = ConfigDict(json_schema_extra={"examples": [TRIAL_EXAMPLE]})


class TrialPage(BaseModel):
    """A page of trials, ordered by trial_number."""

    items: list[TrialRead]
    next_after: int | None = Field(
        description="Pass as `after` for the next page; null at the end."
    )

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [TRIAL_EXAMPLE], "next_after": None}]}
    )


class ArmRead(BaseModel):
    """The bandit's belief about one batch size's reward (-cost)."""

    batch_size: int
    param_mean: float = Field(description="Posterior mean of the reward.")
    param_precision: Precision
    reward_precision: Precision
    num_observations: int

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"batch_size": 64, "param_mean": -66400.0, "param_precision": None,
                 "reward_precision": None, "num_observations": 1},
                {"batch_size": 128, "param_mean": -61250.0, "param_precision": 2.7e-07,
                 "reward_precision": 9.0e-08, "num_observations": 3},
            ]
        }
    )  # fmt: skip


class GroupBatchSizeRead(BaseModel):
    """What a job group knows of one batch size, over all its jobs' GPUs."""

    batch_size: int
    runs: int = Field(description="Final reports of its trials, in every job of the group.")
    exhausted: int = Field(description="Of those, runs that spent max_epochs without the target.")
    converged: int = Field(description="Of those, runs that converged.")
    never_converged: bool = Field(
        description="Ran somewhere (stopped for its cost or out of epochs) and converged "
        "nowhere: the pruning walks of the group's jobs treat it as not converged without a "
        "trial."
    )
    min_epochs: int | None = Field(description="Fewest epochs a converged run needed.")
    mean_epochs: float | None = Field(description="Mean epochs of the converged runs.")


class GroupMember(BaseModel):
    """One job of a group: its GPU, stage and best batch size."""

    job_id: str
    gpu_model: str
    number_of_gpus: int
    policy: Policy
    stage: Stage
    num_trials: int
    min_cost: float | None
    best_batch_size: int | None = Field(
        description="The batch size of its cheapest converged trial; null before one."
    )


GROUP_EXAMPLE: dict[str, Any] = {
    "group": "bert-squad",
    "target_metric": 84.0,
    "higher_is_better_metric": True,
    "max_epochs": 6,
    "created_at": "2026-12-01T01:00:00Z",
    "batch_sizes": [
        {
            "batch_size": 16,
            "runs": 3,
            "exhausted": 0,
            "converged": 3,
            "never_converged": False,
            "min_epochs": 3,
            "mean_epochs": 3.33,
        },
        {
            "batch_size": 32,
            "runs": 5,
            "exhausted": 0,
            "converged": 4,
            "never_converged": False,
            "min_epochs": 4,
            "mean_epochs": 4.25,
        },
    ],
    "members": [
        {
            "job_id": "bert-squad-a40",
            "gpu_model": "NVIDIA A40",
            "number_of_gpus": 1,
            "policy": "zeus",
            "stage": "MAB",
            "num_trials": 6,
            "min_cost": 61250.0,
            "best_batch_size": 32,
        },
    ],
    "next_after": None,
}


class GroupRead(BaseModel):
    """A job group: what converged means in it, its shared statistics and its jobs."""

    group: str
    target_metric: float
    higher_is_better_metric: bool
    max_epochs: int
    created_at: datetime
    batch_sizes: list[GroupBatchSizeRead] = Field(description="Ascending.")
    members: list[GroupMember] = Field(description="A page of its jobs, by job_id.")
    next_after: str | None = Field(
        description="Pass as `after` for the next page of members; null at the end."
    )

    model_config = ConfigDict(json_schema_extra={"examples": [GROUP_EXAMPLE]})  # fmt: skip


class Health(BaseModel):
    """Liveness or readiness."""

    status: Literal["ok", "unavailable"]
    detail: str | None = None

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"status": "ok", "detail": "schema at a1f5336b4df4"}]}
    )

"""Wire models: the Zeus-compatible requests and responses, and the read side.

Field names and defaults are Zeus's (``zeus.optimizer.batch_size.common``).
Unknown fields are ignored, as Zeus's clients may send more. Every bound
here exists so that nothing a client sends reaches the database unchecked.
"""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from app import bandit
from app.bandit import FailureReason, Policy, Stage, TrialStatus, TrialType

INT32_MAX = 2**31 - 1
MAX_BATCH_SIZES = 256
MAX_WINDOW_SIZE = 10_000
MAX_TIME_S = 1e12  # about 31,700 years
MAX_ENERGY_J = 1e18
MAX_POWER_W = 1e9

# No C0/C1 control characters (NUL breaks PostgreSQL text; the rest break logs).
PRINTABLE = r"^[^\x00-\x1f\x7f-\x9f]*$"
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=PRINTABLE)]
Prefix = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=PRINTABLE)]


def _whole_number(value: object) -> object:
    """64.0 is 64: JSON Schema's ``integer`` is any number with no fraction.

    A schema-driven client may send one; "64" (a string), true and 64.5
    are still refused, by the strict validation that follows.
    """
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Int = Annotated[int, BeforeValidator(_whole_number)]
PositiveInt32 = Annotated[Int, Field(gt=0, le=INT32_MAX)]


class WireModel(BaseModel):
    """Ignore unknown fields; refuse NaN, infinities and values of the wrong JSON type.

    Strict: "64" is not a batch size and true is not a GPU count. Numbers go
    by their JSON Schema type, not their spelling: an int is accepted where a
    float is expected, and a whole-number float (64.0) where an integer is.
    Zeus's client sends exact types.
    """

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, strict=True)


class JobParams(WireModel):
    """What the training script sets (Zeus's ``JobParams``, minus the id)."""

    job_id_prefix: Prefix = Field(
        description="Groups the recurrences of one job; a given job_id must start with it."
    )
    batch_sizes: list[PositiveInt32] = Field(
        min_length=1,
        max_length=MAX_BATCH_SIZES,
        description="Batch sizes to choose from: distinct and positive; stored ascending.",
    )
    default_batch_size: PositiveInt32 = Field(
        description="The batch size the pruning stage starts from; one of batch_sizes."
    )
    eta_knob: float = Field(
        default=0.5, ge=0, le=1, description="Weight of energy against time in the cost."
    )
    beta_knob: float | None = Field(
        default=2.0,
        gt=0,
        description="Stop a trial whose cost exceeds beta_knob * min_cost; null disables it.",
    )
    target_metric: float = Field(
        default=0.5, ge=-1e300, le=1e300, description="Validation metric to reach."
    )
    higher_is_better_metric: bool = Field(
        default=True, description="Whether the target is reached from below (accuracy)."
    )
    max_epochs: Int = Field(default=100, gt=0, le=INT32_MAX, description="Epoch budget.")
    num_pruning_rounds: Int = Field(
        default=2, ge=0, le=100, description="Rounds of pruning exploration before the bandit."
    )
    window_size: Int = Field(
        default=0,
        ge=0,
        le=MAX_WINDOW_SIZE,
        description="Recent results an arm is fitted on; 0 means all of them.",
    )
    mab_prior_mean: float = Field(
        default=0.0, ge=-1e30, le=1e30, description="Mean of the arms' prior (a reward: -cost)."
    )
    mab_prior_precision: float = Field(
        default=0.0, ge=0, le=1e30, description="Precision of the arms' prior; 0 is uninformative."
    )
    mab_num_explorations: Int = Field(
        default=2, ge=0, le=10_000, description="Pulls of every arm before sampling."
    )
    mab_seed: Int | None = Field(
        default=None,
        ge=0,
        le=2**63 - 1,
        description="Seed of the job's random generator; its state is persisted, so a "
        "seeded job's choices are reproducible. Null: fresh OS entropy per draw.",
    )
    policy: Policy | None = Field(
        default=None,
        strict=False,  # the enum's text, as JSON sends it
        description="The algorithm: `zeus` (the paper's) or `predictive` (the paper's, "
        "judging doomed runs sooner; docs/SPEC.md section 10). Null or absent (every Zeus "
        "client): the server's BSO_DEFAULT_POLICY when the job is created, and whatever "
        "the job was created with when it is registered again.",
    )
    group: Identifier | None = Field(
        default=None,
        description="Job group (beyond Zeus; docs/SPEC.md section 12): jobs of one group, "
        "typically one recipe on different GPU types, share what each batch size needs to "
        "converge, and must agree on target_metric, higher_is_better_metric and max_epochs. "
        "Null or absent: none, or with BSO_GROUP_BY_PREFIX=true the job_id_prefix when the "
        "job is created; on re-registration, whatever the job was created with.",
    )

    @model_validator(mode="after")
    def _check_batch_sizes(self) -> JobParams:
        if len(set(self.batch_sizes)) != len(self.batch_sizes):
            raise ValueError("batch_sizes must be distinct")
        self.batch_sizes = sorted(self.batch_sizes)
        if self.default_batch_size not in self.batch_sizes:
            raise ValueError(
                f"default_batch_size {self.default_batch_size} is not one of batch_sizes"
            )
        return self


class GpuConfig(WireModel):
    """What the Zeus client fills in from the GPUs it sees."""

    max_power: float = Field(
        gt=0, le=MAX_POWER_W, description="Power limit in watts, times the number of GPUs."
    )
    number_of_gpus: Int = Field(gt=0, le=1_000_000)
    gpu_model: Identifier


JOB_SPEC_EXAMPLE: dict[str, Any] = {
    "job_id": "mnist-nightly",
    "job_id_prefix": "mnist",
    "batch_sizes": [32, 64, 128, 256],
    "default_batch_size": 128,
    "eta_knob": 0.5,
    "beta_knob": 2.0,
    "target_metric": 0.97,
    "higher_is_better_metric": True,
    "max_epochs": 20,
    "num_pruning_rounds": 2,
    "window_size": 0,
    "mab_prior_mean": 0.0,
    "mab_prior_precision": 0.0,
    "mab_num_explorations": 2,
    "mab_seed": 42,
    "max_power": 300.0,
    "number_of_gpus": 1,
    "gpu_model": "NVIDIA A40",
    "policy": "zeus",
}


class JobSpec(JobParams, GpuConfig):
    """A job registration (Zeus's ``JobSpecFromClient``)."""

    job_id: Identifier | None = Field(
        default=None,
        description="Null: the server makes one, '{job_id_prefix}-{8 hex digits}'.",
    )

    @model_validator(mode="after")
    def _check_job_id(self) -> JobSpec:
        if self.job_id is not None and not self.job_id.startswith(self.job_id_prefix):
            raise ValueError(
                f"job_id {self.job_id!r} does not start with job_id_prefix {self.job_id_prefix!r}"
            )
        return self

    def algorithm_params(self, default_policy: Policy = Policy.ZEUS) -> bandit.JobParams:
        """The part of the spec the algorithm reads; ``default_policy`` if it names none."""
        values = {
            f.name: getattr(self, f.name)
            for f in fields(bandit.JobParams)
            if f.name not in {"batch_sizes", "policy"}
        }
        return bandit.JobParams(
            batch_sizes=tuple(sorted(self.batch_sizes)),
            policy=self.policy or default_policy,
            **values,
        )

    model_config = ConfigDict(json_schema_extra={"examples": [JOB_SPEC_EXAMPLE]})


# The fields of a registration stored with the job, and compared on re-registration.
JOB_SPEC_FIELDS = tuple(
    name for name in JobSpec.model_fields if name not in {"job_id", "batch_sizes"}
)


class CreatedJob(JobSpec):
    """The registered job (Zeus's ``CreatedJob``): the spec with its job_id and policy."""

    job_id: str
    policy: Policy = Field(strict=False, description="The algorithm the job runs.")


class TrialId(WireModel):
    """A dispatched trial: the batch size to train with, and its number."""

    job_id: Identifier
    batch_size: PositiveInt32
    trial_number: PositiveInt32

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"job_id": "mnist-nightly", "batch_size": 128, "trial_number": 1}]
        }
    )


class TrainingResult(TrialId):
    """Cumulative time, energy and metric of a trial after ``current_epoch``."""

    time: float = Field(ge=0, le=MAX_TIME_S, description="Seconds since the trial started.")
    energy: float = Field(ge=0, le=MAX_ENERGY_J, description="Joules since the trial started.")
    metric: float = Field(description="Validation metric after this epoch.")
    current_epoch: Int = Field(ge=1, le=INT32_MAX, description="1-based epoch just finished.")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "job_id": "mnist-nightly",
                    "batch_size": 128,
                    "trial_number": 1,
                    "time": 61.5,
                    "energy": 14850.0,
                    "metric": 0.93,
                    "current_epoch": 1,
                }
            ]
        }
    )


class ReportResponse(BaseModel):
    """Whether to stop training, and whether the trial reached its target."""

    stop_train: bool
    converged: bool
    message: str

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"stop_train": False, "converged": False,
                 "message": "Stop condition not met, keep training."},
                {"stop_train": True, "converged": True,
                 "message": "Train succeeded: reached the target metric."},
            ]
        }
    )  # fmt: skip


class Message(BaseModel):
    """An error, or an acknowledgement: a human-readable message."""

    message: str

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"message": "Job 'mnist-nightly' was deleted."}]}
    )


class ValidationErrorBody(BaseModel):
    """Invalid input: a message naming the fields, and FastAPI's usual detail list."""

    message: str
    detail: list[dict[str, Any]]

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "message": "time: Input should be greater than or equal to 0",
                    "detail": [
                        {
                            "loc": ["body", "time"],
                            "msg": "Input should be greater than or equal to 0",
                            "type": "greater_than_equal",
                        }
                    ],
                }
            ]
        }
    )


# ---------------------------------------------------------------- read side

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
    default_batch_size: int | None = Field(
        description="The round's starting batch size; null when the round ended with no "
        "batch size converged (the job cannot proceed)."
    )
    candidates: list[int] = Field(description="Batch sizes still in the running.")


class JobRead(CreatedJob):
    """A job's configuration and learning state."""

    stage: Stage = Field(strict=False)  # a response: the stored text is fine
    min_cost: float | None = Field(description="Cheapest converged cost so far.")
    min_cost_batch_size: int = Field(description="Its batch size (the default until then).")
    exploration: PruningProgress | None = Field(
        description="The current pruning round; null in the bandit stage."
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


def error_example(message: str) -> dict[str, Any]:
    """An OpenAPI response entry for an error with its example body."""
    return {"model": Message, "content": {"application/json": {"example": {"message": message}}}}

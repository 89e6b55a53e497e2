"""Wire models: the Zeus-compatible requests and responses (the read side is in reads.py).

Field names and defaults are Zeus's (``zeus.optimizer.batch_size.common``).
Unknown fields are ignored, as Zeus's clients may send more. Every bound
here exists so that nothing a client sends reaches the database unchecked.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from app import bandit
from app.bandit import Policy

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


def error_example(message: str) -> dict[str, Any]:
    """An OpenAPI response entry for an error with its example body."""
    return {"model": Message, "content": {"application/json": {"example": {"message": message}}}}

"""HTTP endpoints: validate, call one use case, return its schema.

The first five are Zeus's wire API (paths, fields and status codes kept so
that Zeus's ``BatchSizeOptimizer`` client works unchanged); the rest is the
read side that Zeus lacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncEngine

from app import reads, service
from app.bandit import Lease, TrialStatus, TrialType
from app.config import Settings
from app.http.auth import NOT_A_TRAINER, NOT_AN_ADMIN, UNAUTHENTICATED, admin, trainer, viewer
from app.http.idempotency import FORM, declared, idempotency_key
from app.roles import Principal
from app.schemas import (
    JOB_SPEC_EXAMPLE,
    PRINTABLE,
    ArmRead,
    CreatedJob,
    GroupRead,
    Health,
    JobPage,
    JobRead,
    JobSpec,
    Message,
    ReportResponse,
    TrainingResult,
    TrialId,
    TrialPage,
    TrialRead,
    ValidationErrorBody,
    error_example,
)
from app.service import utcnow
from app.telemetry import metrics
from app.telemetry.context import bind_job


async def get_database(request: Request) -> AsyncEngine:
    """The app's engine; each use case opens its own transaction.

    ``async`` on purpose: FastAPI runs plain ``def`` dependencies on a thread.
    """
    engine: AsyncEngine = request.app.state.engine
    return engine


DatabaseDep = Annotated[AsyncEngine, Depends(get_database)]


async def get_lease(request: Request) -> Lease:
    """The configured trial lease (BSO_TRIAL_LEASE_S)."""
    settings = request.app.state.settings
    lease: Lease = settings.lease
    return lease


LeaseDep = Annotated[Lease, Depends(get_lease)]


@dataclass(frozen=True, slots=True)
class TrainerCall:
    """What a Zeus API call needs besides its own parameters, from one dependency.

    One dependency, not one each for the engine, the lease, the caller and
    the Idempotency-Key: FastAPI resolves every sub-dependency on every
    request, at some 50 us of CPU each (docs/benchmarks.md, issue 24).
    """

    engine: AsyncEngine
    settings: Settings
    caller: Principal
    key: str | None = None

    @property
    def lease(self) -> Lease:
        lease: Lease = self.settings.lease
        return lease


async def trainer_call(request: Request) -> TrainerCall:
    """The app's engine and settings, and the caller: a trainer (401 or 403 otherwise)."""
    state = request.app.state
    return TrainerCall(state.engine, state.settings, await trainer(request))


async def keyed_trainer_call(request: Request) -> TrainerCall:
    """:func:`trainer_call` with the request's Idempotency-Key (400 if malformed), checked after.

    Its route declares the header in ``openapi_extra`` (idempotency.declared).
    """
    state = request.app.state
    caller = await trainer(request)
    return TrainerCall(state.engine, state.settings, caller, idempotency_key(request))


TrainerCallDep = Annotated[TrainerCall, Depends(trainer_call)]
KeyedTrainerCallDep = Annotated[TrainerCall, Depends(keyed_trainer_call)]
JOB_ID_EXAMPLES = [JOB_SPEC_EXAMPLE["job_id"]]
JobIdQuery = Annotated[
    str,
    Query(
        min_length=1,
        max_length=256,
        pattern=PRINTABLE,
        description="The job.",
        examples=JOB_ID_EXAMPLES,
    ),
]
JobIdPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=256,
        pattern=PRINTABLE,
        description="The job.",
        examples=JOB_ID_EXAMPLES,
    ),
]

UNKNOWN_TRIAL = error_example(
    "Job 'mnist-nightly' has no trial 7. Get one from GET /jobs/batch_size."
)
UNKNOWN_JOB = error_example("Unknown job 'mnist-nightly'. Register it first with POST /jobs.")
INVALID: dict[int | str, dict[str, Any]] = {
    422: {
        "model": ValidationErrorBody,
        "description": "Invalid input: `message` names every invalid field.",
    }
}
TOO_LARGE: dict[int | str, dict[str, Any]] = {
    413: {
        **error_example("Request body too large (limit 65536 bytes)."),
        "description": "The body exceeds BSO_MAX_BODY_BYTES.",
    }
}
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {
        **error_example("The database is unavailable; retry shortly."),
        "description": "The database cannot be reached, or its schema is not migrated to "
        "this release yet (`bso migrate`). Safe to retry.",
    }
}
BUSY: dict[int | str, dict[str, Any]] = {
    503: {
        **error_example("The job is busy with another request; retry shortly."),
        "description": "The job's lock was not free within the lock timeout, the "
        "database is unavailable, or its schema is not migrated to this release yet "
        "(`bso migrate`). Safe to retry.",
    }
}

BAD_KEY: dict[int | str, dict[str, Any]] = {
    400: {
        **error_example(f"Idempotency-Key: empty; a key is {FORM}."),
        "description": "The Idempotency-Key header is malformed or sent more than once.",
    }
}

TRIAL_ERRORS: dict[int | str, dict[str, Any]] = {
    **BAD_KEY,
    404: {**UNKNOWN_TRIAL, "description": "No such job or trial."},
    409: {
        **error_example(
            "Trial 3 of job 'mnist-nightly' was dispatched with batch size 128, not 64."
        ),
        "description": "The batch size is not the one the trial was dispatched with.",
    },
    **INVALID,
    **TOO_LARGE,
    **BUSY,
}

# Guarded when BSO_AUTH=required: the Zeus API needs a trainer (DELETE an
# admin), the read side a viewer; the dashboard copies read's dependencies.
zeus = APIRouter(
    tags=["Zeus-compatible API"],
    responses=UNAUTHENTICATED,
    strict_content_type=False,  # Zeus's client posts JSON without a Content-Type header
)
read = APIRouter(tags=["Read side"], dependencies=[Depends(viewer)], responses=UNAUTHENTICATED)
health = APIRouter(tags=["Health"])


@zeus.post(
    "/jobs",
    status_code=status.HTTP_201_CREATED,
    response_model=CreatedJob,
    summary="Register a job",
    responses={
        201: {"description": "The job was created; the body is its spec with its job_id."},
        200: {"model": CreatedJob, "description": "An identical job was already registered."},
        409: {
            **error_example(
                "Job 'mnist-nightly' is already registered with a different max_epochs. "
                "Use a new job_id for a different configuration."
            ),
            "description": "The job_id exists with a different specification, or the job's "
            "group defines converged differently (target_metric, higher_is_better_metric, "
            "max_epochs).",
        },
        **NOT_A_TRAINER,
        **INVALID,
        **TOO_LARGE,
        **UNAVAILABLE,
    },
)
async def register_job(spec: JobSpec, response: Response, call: TrainerCallDep) -> CreatedJob:
    """Register a recurring job, or confirm that an identical one exists.

    With `job_id` null the server makes one: `{job_id_prefix}-{8 hex digits}`.
    Registering the same job_id again with an identical spec is a no-op (200).
    """
    bind_job(spec.job_id)
    settings = call.settings
    registration = await service.register_job(
        call.engine, spec, now=utcnow(), default_policy=settings.default_policy,
        group_by_prefix=settings.group_by_prefix, caller=call.caller,
    )  # fmt: skip
    if not registration.created:
        response.status_code = status.HTTP_200_OK
    return registration.job


@zeus.get(
    "/jobs/batch_size",
    response_model=TrialId,
    summary="Get the batch size for the next recurrence",
    openapi_extra=declared(),
    responses={
        404: {**UNKNOWN_JOB, "description": "No such job."},
        **BAD_KEY,
        **NOT_A_TRAINER,
        **INVALID,
        **BUSY,
    },
)
async def get_batch_size(job_id: JobIdQuery, call: KeyedTrainerCallDep) -> TrialId:
    """Dispatch a new trial: the batch size to train this recurrence with.

    Pruning stage: the next batch size to explore, or, while an exploration is
    still running, a Concurrent trial of the cheapest batch size so far.
    Bandit stage: Gaussian Thompson Sampling over the surviving batch sizes.
    The job's trials whose lease ran out are marked Failed first.

    With an `Idempotency-Key`, a retry (same job, same key) while the trial
    it made runs within its lease answers that trial again and creates none,
    so a dispatch whose answer was lost may be sent again.
    """
    return await service.dispatch_trial(
        call.engine, job_id, now=utcnow(), lease=call.lease, caller=call.caller,
        idempotency_key=call.key,
    )  # fmt: skip


@zeus.post(
    "/report",
    response_model=ReportResponse,
    summary="Report an epoch's cumulative result",
    openapi_extra=declared(),
    responses={**TRIAL_ERRORS, **NOT_A_TRAINER},
)
async def report(result: TrainingResult, call: KeyedTrainerCallDep) -> ReportResponse:
    """Report cumulative time, energy and metric after an epoch; obey `stop_train`.

    The trial ends (Succeeded) when it reaches the target, exceeds
    `beta_knob * min_cost`, or spends `max_epochs`. A report on an ended trial
    changes nothing and gets the same answer again, so retries are safe; one
    on a trial whose lease expired answers `stop_train: true` saying so.
    Every report renews the trial's lease.
    """
    bind_job(result.job_id)
    return await service.report_result(
        call.engine, result, now=utcnow(), lease=call.lease, caller=call.caller
    )


@zeus.patch(
    "/trials",
    response_model=TrialRead,
    summary="End a trial",
    openapi_extra=declared(),
    responses={**TRIAL_ERRORS, **NOT_A_TRAINER},
)
async def end_trial(trial: TrialId, call: KeyedTrainerCallDep) -> TrialRead:
    """End a trial (Zeus's client calls this when the training script exits).

    A trial still running without a final report becomes Failed, and its batch
    size will be explored again; an already ended trial is left as it is.
    """
    bind_job(trial.job_id)
    return await service.end_trial(call.engine, trial, now=utcnow(), caller=call.caller)


@zeus.delete(
    "/jobs",
    response_model=Message,
    summary="Delete a job",
    responses={
        404: {**UNKNOWN_JOB, "description": "No such job."},
        **NOT_AN_ADMIN,
        **INVALID,
        **BUSY,
    },
    dependencies=[Depends(admin)],
)
async def delete_job(job_id: JobIdQuery, db: DatabaseDep) -> Message:
    """Delete a job with its trials and arms."""
    await service.delete_job(db, job_id)
    return Message(message=f"Job {job_id!r} was deleted.")


# --------------------------------------------------------------- read side


@read.get(
    "/jobs", response_model=JobPage, summary="List jobs", responses={**INVALID, **UNAVAILABLE}
)
async def list_jobs(
    db: DatabaseDep,
    job_id_prefix: Annotated[
        str | None,
        Query(max_length=256, pattern=PRINTABLE, description="Only jobs with this prefix."),
    ] = None,
    after: Annotated[
        str | None,
        Query(max_length=256, pattern=PRINTABLE, description="`next_after` of the last page."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Page size.")] = 50,
) -> JobPage:
    """Jobs ordered by job_id, a page at a time."""
    return await reads.list_jobs(db, prefix=job_id_prefix, after=after, limit=limit)


@read.get(
    "/jobs/{job_id}",
    response_model=JobRead,
    summary="Read a job",
    responses={404: {**UNKNOWN_JOB, "description": "No such job."}, **INVALID, **UNAVAILABLE},
)
async def get_job(job_id: JobIdPath, db: DatabaseDep) -> JobRead:
    """A job's configuration, stage, min cost and, while pruning, the current round."""
    return await reads.get_job(db, job_id)


@read.get(
    "/jobs/{job_id}/trials",
    response_model=TrialPage,
    summary="List a job's trials",
    responses={404: {**UNKNOWN_JOB, "description": "No such job."}, **INVALID, **UNAVAILABLE},
)
async def list_trials(
    job_id: JobIdPath,
    db: DatabaseDep,
    lease: LeaseDep,
    status: Annotated[TrialStatus | None, Query(description="Filter.")] = None,
    type: Annotated[TrialType | None, Query(description="Filter.")] = None,
    after: Annotated[
        int | None, Query(ge=0, le=2**31 - 1, description="The `next_after` of the previous page.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Page size.")] = 50,
) -> TrialPage:
    """Trials in trial-number order, a page at a time, with running ones' lease expiry."""
    return await reads.list_trials(
        db, job_id, status=status, trial_type=type, after=after, limit=limit, lease=lease
    )


@read.get(
    "/jobs/{job_id}/arms",
    response_model=list[ArmRead],
    summary="Read a job's bandit arms",
    responses={404: {**UNKNOWN_JOB, "description": "No such job."}, **INVALID, **UNAVAILABLE},
)
async def list_arms(job_id: JobIdPath, db: DatabaseDep) -> list[ArmRead]:
    """The bandit's belief per batch size (empty while pruning)."""
    return await reads.list_arms(db, job_id)


@read.get(
    "/groups/{group}",
    response_model=GroupRead,
    summary="Read a job group",
    responses={
        404: {
            **error_example("Unknown job group 'bert-squad': no job was registered in it."),
            "description": "No such group.",
        },
        **INVALID,
        **UNAVAILABLE,
    },
)
async def get_group(
    group: Annotated[
        str, Path(min_length=1, max_length=256, pattern=PRINTABLE, description="The group.")
    ],
    db: DatabaseDep,
    after: Annotated[
        str | None,
        Query(max_length=256, pattern=PRINTABLE, description="`next_after` of the last page."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Members per page.")] = 100,
) -> GroupRead:
    """What a job group's jobs share per batch size, and its jobs with their GPU and stage."""
    return await reads.get_group(db, group, after=after, limit=limit)


# ------------------------------------------------------------------ health


@health.get("/healthz", response_model=Health, summary="Liveness")
async def healthz() -> Health:
    """The process is up and serving. Touches no database."""
    return Health(status="ok")


@health.get(
    "/readyz",
    response_model=Health,
    summary="Readiness",
    responses={503: {"model": Health, "description": "Database unreachable or not migrated."}},
)
async def readyz(request: Request) -> Any:
    """The database is reachable and its schema serves this release.

    At the latest migration, or at a newer one (a newer release migrated it:
    migrations keep the previous release working, docs/upgrades.md).
    """
    try:
        check = await request.app.state.schema.refresh()
    except Exception as exc:  # any failure to reach the database means not ready
        detail = f"database unreachable: {type(exc).__name__}"
        return JSONResponse(Health(status="unavailable", detail=detail).model_dump(), 503)
    if not check.serves:
        return JSONResponse(Health(status="unavailable", detail=check.describe()).model_dump(), 503)
    return Health(status="ok", detail=check.describe())


# A viewer's, like every other GET but the probes (BSO_AUTH=required).
@health.get("/metrics", include_in_schema=False, dependencies=[Depends(viewer)])
def prometheus_metrics() -> Response:
    """Prometheus text format, summed over every worker process (docs/metrics.md).

    A plain ``def``: FastAPI runs it on a thread, so reading the workers'
    files never blocks the event loop.
    """
    return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)

"""What a replay and its optimiser say to each other, shared by every engine.

An engine (engines.py over HTTP, pure_engine.py in memory) answers the four calls a
training script makes; these are their values and the refusal both raise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from app.schemas import JobSpec


class EngineError(Exception):
    """The optimiser refused a call (an HTTP error status, or its in-memory twin)."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(f"{status_code}: {message}")
        self.status_code = status_code
        self.message = message


@dataclass(frozen=True, slots=True)
class TrialId:
    """A dispatched trial: which job, which batch size, which number."""

    job_id: str
    batch_size: int
    trial_number: int


@dataclass(frozen=True, slots=True)
class ReportAnswer:
    """The optimiser's answer to an epoch report."""

    stop_train: bool
    converged: bool
    message: str


class Engine(Protocol):
    """What a training script asks of the batch size optimiser."""

    async def register(self, spec: JobSpec) -> str:
        """Register the job (app.schemas.JobSpec, the wire's model); returns its job_id."""
        ...

    async def next_trial(self, job_id: str) -> TrialId:
        """Dispatch a new trial and say which batch size to train with."""
        ...

    async def report(
        self, trial: TrialId, *, time: float, energy: float, metric: float, current_epoch: int
    ) -> ReportAnswer:
        """Report cumulative time/energy and the metric after ``current_epoch``."""
        ...

    async def end_trial(self, trial: TrialId) -> None:
        """End the trial (a no-op when a final report already ended it)."""
        ...

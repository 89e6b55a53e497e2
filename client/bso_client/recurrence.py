"""One recurrence of a job: trials until one reaches the target, and why it ended.

The paper's evaluation, Zeus's simulator and ``bso simulate`` re-run a
recurrence that the service stopped before the target (for its cost, or out
of epochs) with the batch size the service gives next, every try's cost
counting. ``bso.trials()`` does the same for a training loop:

    for trial in bso.trials():          # at most max_tries (20) tries
        with trial:
            ...train, trial.report(...)...
    bso.last.reason                     # "converged", "max_tries", "fallback", ...

The rule of when to try again is here, shared by the sync and async clients.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from bso_client.trial import TrialView

DEFAULT_MAX_TRIES = 20  # as bso simulate and the paper's evaluation

# Why a recurrence ended (``Outcome.reason``).
CONVERGED = "converged"  # the last try reached the target (the server's or the client's word)
MAX_TRIES = "max_tries"  # max_tries tries, each stopped by the service before the target
FALLBACK = "fallback"  # no batch size from the server (away, or the job cannot proceed), or
# the server went away mid-run, and the try did not reach the target
EXCEPTION = "exception"  # the body of a try raised; the exception goes on to the caller
UNFINISHED = "unfinished"  # a try ended without a stop (the caller left its loop early)

T = TypeVar("T", bound=TrialView)


def check_max_tries(max_tries: int) -> int:
    if not isinstance(max_tries, int) or max_tries < 1:
        raise ValueError(f"max_tries must be a positive integer, not {max_tries!r}")
    return max_tries


def verdict(trial: TrialView, tries: int, max_tries: int) -> str | None:
    """Why the recurrence ends after ``trial`` (its ``tries``-th), or None to try again."""
    decision = trial.decision
    if decision is not None and decision.stop and decision.converged:
        return CONVERGED
    if trial.fallback or (decision is not None and decision.fallback and decision.stop):
        return FALLBACK
    if decision is not None and decision.stop:  # the service stopped it before the target
        return MAX_TRIES if tries >= max_tries else None
    if decision is not None and decision.fallback:
        return FALLBACK
    return UNFINISHED


@dataclass
class Outcome(Generic[T]):
    """A recurrence's tries and why it ended (``reason`` is None while it runs).

    ``converged`` is True when the last try reached the target; ``trial`` is
    that last try; ``cost`` the sum of every try's cost as the client saw it.
    """

    max_tries: int
    tries: list[T] = field(default_factory=list)
    reason: str | None = None

    @property
    def converged(self) -> bool:
        return self.reason == CONVERGED

    @property
    def trial(self) -> T | None:
        return self.tries[-1] if self.tries else None

    @property
    def cost(self) -> float:
        return sum(t.cost for t in self.tries)

    def message(self) -> str:
        """One line for a log: how many tries, and why it ended."""
        batch_sizes = ", ".join(str(t.batch_size) for t in self.tries)
        return f"{len(self.tries)} tries (batch sizes {batch_sizes}): {self.reason or 'running'}"

    def after(self, trial: T) -> str | None:
        """Record why the recurrence ends after ``trial`` (None: try again)."""
        if self.reason is None:
            self.reason = verdict(trial, len(self.tries), self.max_tries)
        return self.reason

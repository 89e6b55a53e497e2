"""One recurrence's bookkeeping, shared by the sync and async clients.

``TrialState`` measures training time and energy between reports (the
client's own HTTP time is left out: the meter is read before and after each
call), builds the calls, and turns answers (or their absence) into
``Decision``s. Without the server's answer it decides what the client can:
the job's target, its direction and ``max_epochs`` are known here, so a run
that reaches its target stops there. It does no I/O itself, so the two
clients are thin loops around it. Trials still open when the interpreter exits are ended by one
``atexit`` hook; leases cover a SIGKILL.
"""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from bso_client.errors import EnergyWarning, warn, warn_once_per_process
from bso_client.http import Call, Endpoint
from bso_client.meters.base import EnergyMeter


@dataclass(frozen=True)
class Decision:
    """The answer to a report: whether to stop, and whether the trial reached its target.

    ``fallback`` is True when the answer is the client's own because the
    server did not answer (or refused) the report: it says stop only when
    the run reached its target metric (``converged``) or ``max_epochs``.
    """

    stop: bool
    converged: bool
    message: str
    fallback: bool = False


class Stopwatch:
    """Cumulative training time and energy, paused while the client talks to the server."""

    def __init__(self, meter: EnergyMeter | None, clock: Callable[[], float] = time.monotonic):
        self._meter = meter
        self._clock = clock
        self.time = 0.0
        self.energy = 0.0
        self.energy_lost = False  # the meter failed: energy is estimated for the whole trial
        self._since: tuple[float, float] | None = None

    def _joules(self) -> float:
        if self._meter is None or self.energy_lost:
            return 0.0
        try:
            return self._meter.joules()
        except Exception as exc:  # a meter must never stop training
            self.energy_lost = True
            warn(
                f"the {self._meter.name} energy meter failed ({exc!r}); this trial reports "
                "max_power x time as its energy",
                EnergyWarning,
            )
            return 0.0

    @property
    def running(self) -> bool:
        return self._since is not None

    def start(self) -> None:
        if self._since is None:
            self._since = (self._clock(), self._joules())

    def pause(self) -> None:
        if self._since is None:
            return
        started, joules = self._since
        self._since = None
        self.time += max(self._clock() - started, 0.0)
        self.energy += max(self._joules() - joules, 0.0)


@dataclass
class Dispatch:
    """Where a trial came from: the server's answer, or the client's fallback."""

    job_id: str | None
    batch_size: int
    trial_number: int | None
    fallback: bool = False
    leader: bool = True


class TrialState:
    """What a trial knows and decides, with no I/O."""

    def __init__(
        self,
        dispatch: Dispatch,
        *,
        max_epochs: int,
        max_power: float,
        meter: EnergyMeter | None,
        clock: Callable[[], float] = time.monotonic,
        target_metric: float | None = None,
        higher_is_better: bool = True,
        eta: float = 0.5,
        estimate_note: str | None = None,
    ) -> None:
        self.dispatch = dispatch
        self.max_epochs = max_epochs
        self.epoch = 0
        self.metric: float | None = None
        self.decision: Decision | None = None
        self.ended = False
        self.degraded = False  # a report found the server away; later ones try once
        self.spooled = 0  # this trial's reports waiting in the spool
        self.server_ended = False  # a stop answer of the server ended it there
        self.target_metric = target_metric
        self.higher_is_better = higher_is_better
        self.eta = eta
        # Said once per process when a report's energy is max_power x time from a
        # max_power the caller did not give; None when there is nothing to say.
        self._estimate_note = estimate_note
        self._max_power = max_power
        self._meter = meter
        self._stopwatch = Stopwatch(meter if dispatch.leader else None, clock)
        self._given: tuple[float | None, float | None] = (None, None)
        self._stopwatch.start()

    # ------------------------------------------------------------ measured values

    @property
    def time(self) -> float:
        """Seconds of training so far (as last reported, or as measured)."""
        given = self._given[0]
        return self._stopwatch.time if given is None else given

    @property
    def energy(self) -> float:
        """Joules so far: the caller's, the meter's, or ``max_power x time`` without a meter."""
        given = self._given[1]
        if given is not None:
            return given
        if self._meter is None or not self._meter.measures_energy or self._stopwatch.energy_lost:
            return self._max_power * self.time
        return self._stopwatch.energy

    @property
    def energy_source(self) -> str:
        """Where ``energy`` comes from: "caller", a meter's name, or "max_power x time"."""
        if self._given[1] is not None:
            return "caller"
        if self._meter is None or not self._meter.measures_energy or self._stopwatch.energy_lost:
            return "max_power x time"
        return self._meter.name

    @property
    def cost(self) -> float:
        """The service's cost of the run so far: ``eta * energy + (1 - eta) * max_power * time``."""
        return self.eta * self.energy + (1 - self.eta) * self._max_power * self.time

    @property
    def stopped(self) -> bool:
        """The run is over: the server said stop, or the client did without its answer."""
        return self.decision is not None and self.decision.stop

    def reached(self) -> bool:
        """The last reported metric reached the job's target."""
        if self.metric is None or self.target_metric is None:
            return False
        if self.higher_is_better:
            return self.metric >= self.target_metric
        return self.metric <= self.target_metric

    def client_decision(self, reason: str) -> Decision:
        """What the client decides without the server: stop at the target or at max_epochs."""
        if self.reached():
            return Decision(
                True,
                True,
                f"{reason}; the run reached target_metric {self.target_metric:g} at epoch "
                f"{self.epoch}, so the client stops it",
                fallback=True,
            )
        if self.epoch >= self.max_epochs:
            return Decision(
                True,
                False,
                f"{reason}; the run spent max_epochs ({self.max_epochs}) without reaching "
                "the target, so the client stops it",
                fallback=True,
            )
        return Decision(False, False, f"{reason}; training goes on", fallback=True)

    # ---------------------------------------------------------------- reports

    def report_call(
        self, metric: float, time: float | None, energy: float | None
    ) -> Call | Decision:
        """The POST /report to send for this epoch, or the decision when none is sent."""
        if self.ended:
            raise RuntimeError("the trial has ended: report inside the `with bso.trial()` block")
        if self.stopped:
            assert self.decision is not None
            return self.decision  # the server already answered the final report
        self._stopwatch.pause()
        self.epoch += 1
        self.metric = float(metric)
        self._given = (time, energy)
        if not self.dispatch.leader:
            self._stopwatch.start()
            return Decision(False, False, "Only rank 0 reports; broadcast its decision.", True)
        if energy is None and self._estimate_note and self.energy_source == "max_power x time":
            warn_once_per_process("estimate", self._estimate_note, EnergyWarning)
        if self.dispatch.fallback:
            self.decision = self.client_decision("The optimizer gave no batch size")
            if not self.decision.stop:
                self._stopwatch.start()
            return self.decision
        return Call(
            "POST",
            "/report",
            json={
                "job_id": self.dispatch.job_id,
                "batch_size": self.dispatch.batch_size,
                "trial_number": self.dispatch.trial_number,
                "time": self.time,
                "energy": self.energy,
                "metric": float(metric),
                "current_epoch": self.epoch,
            },
        )

    def answered(self, body: Any) -> Decision:
        """The server's answer to the report."""
        self.degraded = False
        return self.server_decided(
            Decision(
                stop=bool(body["stop_train"]),
                converged=bool(body["converged"]),
                message=str(body.get("message", "")),
            )
        )

    def server_decided(self, decision: Decision) -> Decision:
        """The server's decision (to this report, or to a kept one it just received)."""
        self.decision = decision
        self.server_ended = decision.stop
        if not decision.stop:
            self._stopwatch.start()
        return decision

    def unanswered(self, reason: str) -> Decision:
        """No usable answer to the report: the client decides (stop at target or max_epochs)."""
        self.degraded = True
        self.decision = self.client_decision(f"The optimizer did not answer ({reason})")
        if not self.decision.stop:
            self._stopwatch.start()
        return self.decision

    # -------------------------------------------------------------------- end

    def end_call(self) -> Call | None:
        """The PATCH /trials that ends the trial on the server; None when none is needed."""
        self._stopwatch.pause()
        self.ended = True
        if self.dispatch.fallback or not self.dispatch.leader or self.server_ended:
            return None  # nothing on the server, or the final report already ended it
        return Call(
            "PATCH",
            "/trials",
            json={
                "job_id": self.dispatch.job_id,
                "batch_size": self.dispatch.batch_size,
                "trial_number": self.dispatch.trial_number,
            },
        )


class TrialView:
    """What a trial shows, sync or async: its batch size, budget and measurements."""

    def __init__(self, state: TrialState) -> None:
        self._state = state

    @property
    def job_id(self) -> str | None:
        """The job's id (None only when a server-made id was never obtained)."""
        return self._state.dispatch.job_id

    @property
    def batch_size(self) -> int:
        """The batch size to train this recurrence with."""
        return self._state.dispatch.batch_size

    @property
    def trial_number(self) -> int | None:
        """The server's number for this trial; None for a fallback or non-leader trial."""
        return self._state.dispatch.trial_number

    @property
    def max_epochs(self) -> int:
        """The job's epoch budget; the server stops the trial after it at the latest."""
        return self._state.max_epochs

    @property
    def fallback(self) -> bool:
        """True when the server was unavailable and the default batch size was taken."""
        return self._state.dispatch.fallback

    @property
    def leader(self) -> bool:
        """True on the rank that talks to the server (rank 0)."""
        return self._state.dispatch.leader

    @property
    def epoch(self) -> int:
        """Reports made so far (the last report's ``current_epoch``)."""
        return self._state.epoch

    @property
    def time(self) -> float:
        """Cumulative training seconds, without the client's own HTTP time."""
        return self._state.time

    @property
    def energy(self) -> float:
        """Cumulative joules (see ``energy_source``)."""
        return self._state.energy

    @property
    def energy_source(self) -> str:
        """Where ``energy`` comes from: a meter's name, "caller" or "max_power x time"."""
        return self._state.energy_source

    @property
    def cost(self) -> float:
        """The service's cost of this run so far (docs/SPEC.md section 1), as the client sees it."""
        return self._state.cost

    @property
    def ended(self) -> bool:
        """The trial has ended (its block was left, or ``end()`` was called)."""
        return self._state.ended

    @property
    def decision(self) -> Decision | None:
        """The last report's answer."""
        return self._state.decision

    def follow(self, decision: Decision) -> Decision:
        """On a rank other than 0, take rank 0's ``decision`` (broadcast) as this trial's.

        So every rank's ``bso.trials()`` tries again, or ends, together. Rank
        0's trial keeps its own; either way ``decision`` is returned.
        """
        if not self.leader:
            self._state.decision = decision
        return decision

    def __repr__(self) -> str:
        return (
            f"Trial(job_id={self.job_id!r}, batch_size={self.batch_size}, "
            f"trial_number={self.trial_number}, epoch={self.epoch}, fallback={self.fallback})"
        )


class _OpenTrials:
    """Trials not yet ended; the interpreter's exit ends them (one try each, short timeout)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[int, tuple[Endpoint, TrialState]] = {}
        atexit.register(self.end_all)

    def add(self, endpoint: Endpoint, state: TrialState) -> None:
        with self._lock:
            self._open[id(state)] = (endpoint, state)

    def discard(self, state: TrialState) -> None:
        with self._lock:
            self._open.pop(id(state), None)

    def end_all(self) -> None:
        with self._lock:
            pending, self._open = list(self._open.values()), {}
        for endpoint, state in pending:
            call = state.end_call()
            if call is None or state.spooled:
                continue  # kept reports go first, at the job's next start (or the lease ends it)
            options = {**endpoint.request_options(call), "timeout": min(endpoint.timeout, 5.0)}
            try:
                with httpx.Client() as http:
                    http.request(call.method, **options)
            except httpx.HTTPError:
                pass  # the server is away: the trial's lease ends it


OPEN_TRIALS = _OpenTrials()

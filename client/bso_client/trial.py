"""One recurrence's bookkeeping, shared by the sync and async clients.

``TrialState`` measures training time and energy between reports (the
client's own HTTP time is left out: the meter is read before and after each
call), builds the calls, and turns answers (or their absence) into
``Decision``s. It does no I/O itself, so the two clients are thin loops
around it. Trials still open when the interpreter exits are ended by one
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

from bso_client.errors import EnergyWarning, warn
from bso_client.http import Call, Endpoint
from bso_client.meters.base import EnergyMeter


@dataclass(frozen=True)
class Decision:
    """The answer to a report: whether to stop, and whether the trial reached its target.

    ``fallback`` is True when the answer is the client's own because the
    server could not be reached: it never says stop.
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
    ) -> None:
        self.dispatch = dispatch
        self.max_epochs = max_epochs
        self.epoch = 0
        self.decision: Decision | None = None
        self.ended = False
        self.degraded = False  # a report found the server away; later ones try once
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
    def stopped(self) -> bool:
        """The server said stop: the trial ended on its side."""
        return self.decision is not None and self.decision.stop

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
        self._given = (time, energy)
        if not self.dispatch.leader:
            self._stopwatch.start()
            return Decision(False, False, "Only rank 0 reports; broadcast its decision.", True)
        if self.dispatch.fallback:
            self._stopwatch.start()
            return Decision(
                False, False, "The optimizer was unavailable: training goes on.", fallback=True
            )
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
        self.decision = Decision(
            stop=bool(body["stop_train"]),
            converged=bool(body["converged"]),
            message=str(body.get("message", "")),
        )
        if not self.decision.stop:
            self._stopwatch.start()
        return self.decision

    def unanswered(self, reason: str) -> Decision:
        """No answer to the report: keep training."""
        self.degraded = True
        self._stopwatch.start()
        return Decision(False, False, f"The optimizer did not answer ({reason}).", fallback=True)

    # -------------------------------------------------------------------- end

    def end_call(self) -> Call | None:
        """The PATCH /trials that ends the trial on the server; None when none is needed."""
        self._stopwatch.pause()
        self.ended = True
        if self.dispatch.fallback or not self.dispatch.leader or self.stopped:
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
    def decision(self) -> Decision | None:
        """The last report's answer."""
        return self._state.decision

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
            if call is None:
                continue
            options = {**endpoint.request_options(call), "timeout": min(endpoint.timeout, 5.0)}
            try:
                with httpx.Client() as http:
                    http.request(call.method, **options)
            except httpx.HTTPError:
                pass  # the server is away: the trial's lease ends it


OPEN_TRIALS = _OpenTrials()

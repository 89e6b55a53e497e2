"""What the sync and async optimizers share: settings, the meter, the calls, the failure rule.

No I/O here but opening the energy meter and the report spool. ``BSO_URL``
and ``BSO_TOKEN`` are read when the optimizer is made; the unavailability and
refusal warnings are given once per optimizer (and the ``warnings`` module's
filters apply as usual). client/README.md's failure table is this module's
contract: before a run has its batch size a 4xx raises (but the 409 of a job
that cannot proceed); after, nothing the server answers raises into training.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any, Literal

from bso_client import distributed, rules
from bso_client.errors import (
    BSOError,
    BSORejectedError,
    BSOUnavailableError,
    BSOWarning,
    RejectedWarning,
    UnavailableWarning,
    warn,
)
from bso_client.http import Call, Endpoint, Retry
from bso_client.meters import EnergyChoice, EnergyMeter, open_meter
from bso_client.spec import Host, JobSpec
from bso_client.spool import Record, Replay, Spool, spool_dir
from bso_client.trial import Decision, Dispatch, TrialState

OnUnavailable = Literal["fallback", "raise"]
DEFAULT_URL = "http://127.0.0.1:8000"

logger = logging.getLogger("bso_client")


class Session:
    """One optimizer's configuration and state, whichever I/O style drives it."""

    def __init__(
        self,
        job: JobSpec,
        *,
        url: str | None,
        token: str | None,
        energy: EnergyChoice | EnergyMeter,
        on_unavailable: OnUnavailable,
        timeout: float,
        retry: Retry | None,
        rank: int | None,
        spool: str | os.PathLike[str] | None = None,
    ) -> None:
        if not isinstance(job, JobSpec):
            raise TypeError(f"job must be a bso_client.JobSpec, not {type(job).__name__}")
        if on_unavailable not in ("fallback", "raise"):
            raise ValueError(
                f'on_unavailable must be "fallback" or "raise", not {on_unavailable!r}'
            )
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        self.job = job
        self.endpoint = Endpoint(
            url=url or os.environ.get("BSO_URL") or DEFAULT_URL,
            token=token if token is not None else (os.environ.get("BSO_TOKEN") or None),
            timeout=timeout,
            retry=retry or Retry(),
        )
        self.on_unavailable = on_unavailable
        self.rank = distributed.rank() if rank is None else rank
        self._energy = energy
        self.meter: EnergyMeter | None = None
        self.registered: dict[str, Any] | None = None
        self._warned: set[str] = set()
        self._spool_dir: Path = spool_dir(spool)
        self._spools: dict[str, Spool] = {}

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @property
    def job_id(self) -> str | None:
        if self.job.job_id is not None:
            return self.job.job_id
        return None if self.registered is None else str(self.registered["job_id"])

    # ---------------------------------------------------------------- meter

    def open_meter(self) -> EnergyMeter:
        if self.meter is None:
            self.meter = open_meter(self._energy)
        return self.meter

    def close_meter(self) -> None:
        if self.meter is not None and isinstance(self._energy, str):
            self.meter.close()  # a meter the caller gave is the caller's to close
        self.meter = None

    def estimate_note(self) -> str | None:
        """What to say when a report's energy is ``max_power x time`` from a max_power we chose.

        None when the spec gives ``max_power`` (the cost is then what the caller asked for).
        """
        if self.job.max_power is not None:
            return None
        meter = self.open_meter()
        reason = getattr(meter, "reason", None) or f"the {meter.name} meter measures no energy"
        source = getattr(meter, "max_power_source", None) or f"the {meter.name} meter's host"
        return (
            f"no energy measured ({reason}): reports carry max_power x time as their energy, "
            f"so the cost is max_power x time, with max_power {self.host().max_power:g} W from "
            f"{source}. Give JobSpec(max_power=...) or a meter (energy=...), or pass energy= "
            "to trial.report()."
        )

    def host(self) -> Host:
        """The hardware fields of the spec: the spec's own where set, else the meter's."""
        measured = self.open_meter().host
        return Host(
            gpu_model=self.job.gpu_model or measured.gpu_model,
            number_of_gpus=self.job.number_of_gpus or measured.number_of_gpus,
            max_power=self.job.max_power or measured.max_power,
        )

    # ---------------------------------------------------------------- calls

    def register_call(self) -> Call:
        # A null job_id makes a new job on every POST: not safe to repeat.
        return Call(
            "POST", "/jobs", json=self.job.wire(self.host()), idempotent=self.job.job_id is not None
        )

    def dispatch_call(self) -> Call:
        job_id = self.job_id
        assert job_id is not None, "registered first"
        # One key per dispatch, sent again by its retries: the server answers a
        # retry with the trial the first try made (SPEC 3), so a dispatch whose
        # answer was lost (reset, timeout) is retried like any idempotent call.
        key = f'"{uuid.uuid4()}"'  # a Structured Field string, as the IETF draft spells it
        return Call(
            "GET", "/jobs/batch_size", params={"job_id": job_id},
            headers={"Idempotency-Key": key}, idempotent=True,
        )  # fmt: skip

    # --------------------------------------------------------------- trials

    def _state(self, dispatch: Dispatch) -> TrialState:
        meter = self.meter if dispatch.leader else None
        max_power = self.host().max_power if dispatch.leader else 0.0
        estimate = self.estimate_note() if dispatch.leader and meter is not None else None
        if meter is not None and meter.measures_energy:
            estimate = None
        return TrialState(
            dispatch,
            max_epochs=self.job.max_epochs,
            max_power=max_power,
            meter=meter,
            target_metric=self.job.target_metric,
            higher_is_better=self.job.higher_is_better_metric,
            eta=self.job.eta_knob,
            estimate_note=estimate,
        )

    def dispatched_state(self, answer: Any) -> TrialState:
        batch_size = int(answer["batch_size"])
        if batch_size not in self.job.batch_sizes:
            raise BSOError(
                f"the server at {self.endpoint.safe_url} answered batch size {batch_size}, "
                f"which is not one of {list(self.job.batch_sizes)}"
            )
        dispatch = Dispatch(str(answer["job_id"]), batch_size, int(answer["trial_number"]))
        logger.info(
            "job %s: trial %d trains with batch size %d",
            dispatch.job_id, dispatch.trial_number, batch_size,
        )  # fmt: skip
        return self._state(dispatch)

    def fallback_state(self) -> TrialState:
        return self._state(Dispatch(self.job_id, self.job.default_batch_size, None, fallback=True))

    def follower_state(self) -> TrialState:
        dispatch = Dispatch(self.job_id, self.job.default_batch_size, None, leader=False)
        return self._state(dispatch)

    # ------------------------------------------------------- unavailability

    def _warn_once(
        self, key: str, message: str, category: type[BSOWarning] = UnavailableWarning
    ) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warn(message, category)
        logger.info("%s", message)

    def on_dispatch_failure(self, exc: BSOUnavailableError) -> None:
        """Raise, or warn once that training goes on with the default batch size."""
        if self.on_unavailable == "raise":
            raise exc
        self._warn_once(
            "dispatch",
            f"the batch size optimizer is unavailable ({exc}); training with the default "
            f"batch size {self.job.default_batch_size}; the client stops the run at its "
            "target or max_epochs",
        )

    def on_dispatch_rejected(self, exc: BSORejectedError) -> None:
        """Raise the caller's mistake; a job that cannot proceed trains at the default, loudly."""
        if exc.status_code != rules.CANNOT_PROCEED or exc.path != "/jobs/batch_size":
            raise exc
        message = (
            f"THE JOB CANNOT PROCEED: {exc}. This run trains with the default batch size "
            f"{self.job.default_batch_size}, without the optimizer; the client stops it at its "
            "target or max_epochs."
        )
        logger.error("%s", message)
        warn(message, RejectedWarning)  # every run: the operator must act

    def job_gone(self, exc: BSORejectedError) -> bool:
        """A dispatch answered 404 for a job this client had registered: it was deleted since.

        Forgets the registration, so that the caller registers the job again
        from this spec (the optimizer starts over for it) and dispatches once
        more, instead of failing a recurring job because an operator reset it.
        """
        if exc.status_code != 404 or exc.path != "/jobs/batch_size" or self.registered is None:
            return False
        message = (
            f"job {self.job_id} is gone from {self.endpoint.safe_url} (deleted since this "
            "process registered it): registering it again from this spec; the optimizer "
            "starts over for it"
        )
        self.registered = None
        logger.warning("%s", message)
        warn(message, RejectedWarning)
        return True

    # ------------------------------------------------------------ the spool

    def spool(self) -> Spool | None:
        """The spool of this job's kept reports on this server (None before the job has an id)."""
        job_id = self.job_id
        if job_id is None:
            return None
        if job_id not in self._spools:
            self._spools[job_id] = Spool(self._spool_dir, self.endpoint.safe_url, job_id)
        return self._spools[job_id]

    def keep(self, state: TrialState, call: Call) -> None:
        """Keep a call of ``state``'s trial in the spool, to send when the server takes it."""
        spool = self.spool()
        if spool is not None and spool.add(Record.of(call)):
            state.spooled += 1

    def replayed(self, replay: Replay, state: TrialState | None) -> None:
        """What a replay of the spool changed: the running trial's decision, a warning."""
        if replay.dropped:
            warn(
                f"{replay.dropped} kept report(s) and end(s) were dropped: the server at "
                f"{self.endpoint.safe_url} no longer holds their trial (its lease expired, or "
                "it was deleted)",
                UnavailableWarning,
            )
        if replay.delivered:
            logger.info("sent %d kept report(s) to the server", replay.delivered)
        if state is None or state.dispatch.trial_number is None:
            return
        key = (str(state.dispatch.job_id), state.dispatch.trial_number)
        state.spooled = replay.pending(key)
        if key in replay.decisions:
            state.server_decided(replay.decisions[key])
        elif replay.blocked is not None:
            state.degraded = True

    def on_report_failure(
        self, state: TrialState, call: Call, exc: BSOUnavailableError
    ) -> Decision:
        if self.on_unavailable == "raise":
            raise exc
        self._warn_once(
            "report",
            f"a report got no answer ({exc}); training goes on: the client stops the run at "
            "its target or max_epochs, and keeps its reports to send, in order, when the "
            "server answers again",
        )
        self.keep(state, call)
        return state.unanswered(str(exc))

    def on_report_rejected(self, state: TrialState, call: Call, exc: BSORejectedError) -> Decision:
        """A 4xx to a running trial's report: warn once, keep it if it may pass later, decide."""
        later = exc.status_code in rules.KEPT_FOR_LATER
        self._warn_once(
            f"rejected-{exc.status_code}",
            f"the server refused a report of the running trial ({exc}); training goes on: "
            "the client stops the run at its target or max_epochs"
            + (
                ", and keeps its reports to send when the server takes them (the trial ends "
                "then, or by its lease)"
                if later
                else ""
            ),
            RejectedWarning,
        )
        if later:
            self.keep(state, call)
        return state.unanswered(f"{exc.status_code} {exc.message}")

    def on_unsent(self, state: TrialState, call: Call) -> Decision:
        """Earlier reports still wait in the spool: keep this one after them, decide."""
        self.keep(state, call)
        return state.unanswered("earlier reports still wait for the server")

    def on_end_failure(
        self, state: TrialState, call: Call, exc: BaseException, *, raise_errors: bool
    ) -> None:
        """A failed PATCH /trials: kept for later; raised only under ``on_unavailable="raise"``."""
        if isinstance(exc, BSOUnavailableError):
            if raise_errors and self.on_unavailable == "raise":
                raise exc
            self.keep(state, call)
            self._warn_once(
                "end",
                f"ending the trial failed ({exc}); the end is kept and sent when the server "
                "answers again (or the trial's lease ends it)",
            )
            return
        if isinstance(exc, BSORejectedError):
            if exc.status_code in rules.KEPT_FOR_LATER:
                self.keep(state, call)
            self._warn_once(
                f"rejected-{exc.status_code}",
                f"the server refused to end the trial ({exc}); it ends when the server takes "
                "the kept end, or by its lease",
                RejectedWarning,
            )
            return
        if raise_errors or not isinstance(exc, Exception):
            raise exc
        logger.warning("ending the trial failed: %r", exc)


class OptimizerView:
    """What an optimizer shows, sync or async: its job and id, the server, the registration."""

    _session: Session

    @property
    def job(self) -> JobSpec:
        return self._session.job

    @property
    def job_id(self) -> str | None:
        """The job's id: the spec's, or the server's once it registered a null one."""
        return self._session.job_id

    @property
    def url(self) -> str:
        """The server's URL, without any credential in it."""
        return self._session.endpoint.safe_url

    @property
    def registered(self) -> dict[str, Any] | None:
        """The server's answer to the registration (the job as stored), once registered."""
        return self._session.registered

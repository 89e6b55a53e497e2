"""What the sync and async optimizers share: settings, the meter, the calls, the fallback rules.

No I/O here but opening the energy meter. ``BSO_URL`` and ``BSO_TOKEN`` are
read when the optimizer is made; the unavailability warnings are given once
per optimizer (and the ``warnings`` module's filters apply as usual).
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import Any, Literal

from bso_client import distributed
from bso_client.errors import (
    BSOError,
    BSORejectedError,
    BSOUnavailableError,
    UnavailableWarning,
    warn,
)
from bso_client.http import Call, Endpoint, Retry
from bso_client.meters import EnergyChoice, EnergyMeter, open_meter
from bso_client.spec import Host, JobSpec
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
        return TrialState(
            dispatch, max_epochs=self.job.max_epochs, max_power=max_power, meter=meter
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

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warn(message, UnavailableWarning)
        logger.info("%s", message)

    def on_dispatch_failure(self, exc: BSOUnavailableError) -> None:
        """Raise, or warn once that training goes on with the default batch size."""
        if self.on_unavailable == "raise":
            raise exc
        self._warn_once(
            "dispatch",
            f"the batch size optimizer is unavailable ({exc}); training with the default "
            f"batch size {self.job.default_batch_size}, and reports will not stop training",
        )

    def on_report_failure(self, state: TrialState, exc: BSOUnavailableError) -> Decision:
        if self.on_unavailable == "raise":
            raise exc
        self._warn_once(
            "report",
            f"a report got no answer ({exc}); training goes on, and the server's decisions "
            "resume when it answers again",
        )
        return state.unanswered(str(exc))

    def on_end_failure(self, exc: Exception, *, raise_errors: bool) -> None:
        """A failed PATCH /trials: raise it when nothing else is being raised and it matters."""
        if raise_errors and (
            isinstance(exc, BSORejectedError)
            or (isinstance(exc, BSOUnavailableError) and self.on_unavailable == "raise")
        ):
            raise exc
        if not isinstance(exc, BSOError):
            if raise_errors:
                raise exc
            logger.warning("ending the trial failed: %r", exc)
            return
        self._warn_once(
            "end", f"ending the trial failed ({exc}); its lease will end it on the server"
        )


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

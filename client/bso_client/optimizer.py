"""``BatchSizeOptimizer``: a batch size for each recurrence of a training job, and when to stop.

    bso = BatchSizeOptimizer(job=JobSpec(...))        # url/token: BSO_URL / BSO_TOKEN
    for trial in bso.trials():                        # tries until one reaches the target
        with trial:                                   # registers (idempotent), dispatches
            for epoch in range(1, trial.max_epochs + 1):
                ...train with trial.batch_size...
                if trial.report(metric=accuracy).stop:
                    break
    print(bso.last.reason)                            # "converged", "max_tries", ...

Training never fails because the server is away (``on_unavailable="fallback"``,
the default): the trial uses the default batch size and the client stops it at
its target; a warning says so once. The rules both clients share live in
``bso_client.session``.
"""

from __future__ import annotations

import os
import types
from typing import Any

import httpx

from bso_client.errors import BSOError, BSORejectedError, BSOUnavailableError
from bso_client.http import NO_RETRY, Call, Retry, SyncTransport
from bso_client.meters import EnergyChoice, EnergyMeter
from bso_client.recurrence import DEFAULT_MAX_TRIES, EXCEPTION, Outcome, check_max_tries
from bso_client.session import OnUnavailable, OptimizerView, Session
from bso_client.spec import JobSpec
from bso_client.trial import OPEN_TRIALS, Decision, TrialState, TrialView


class Trial(TrialView):
    """One recurrence: its batch size, its reports, its end (leaving the ``with`` block)."""

    def __init__(self, optimizer: BatchSizeOptimizer, state: TrialState) -> None:
        super().__init__(state)
        self._optimizer = optimizer
        self._outcome: Outcome[Trial] | None = None  # the recurrence it is a try of

    def report(
        self, metric: float, *, time: float | None = None, energy: float | None = None
    ) -> Decision:
        """Report this epoch's validation ``metric``; obey the answer's ``stop``.

        ``time`` (seconds) and ``energy`` (joules) are cumulative since the
        trial started; leave them out to use the client's measurements.
        """
        step = self._state.report_call(metric, time, energy)
        if isinstance(step, Decision):
            return step
        return self._optimizer._report(self._state, step)

    def end(self) -> None:
        """End the trial on the server (idempotent); leaving the ``with`` block calls it."""
        if not self._state.ended:
            self._optimizer._end(self._state, raise_errors=True)

    def __enter__(self) -> Trial:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        if exc is not None and self._outcome is not None and self._outcome.reason is None:
            self._outcome.reason = EXCEPTION
        if not self._state.ended:
            # Never hide the block's own exception behind a failed PATCH.
            self._optimizer._end(self._state, raise_errors=exc is None)


class Recurrence:
    """``bso.trials()``: the tries of one recurrence; ``outcome`` (``bso.last``) says how it ended.

    The next try starts only after the service stopped the last one before the
    target; see ``bso_client.recurrence`` for the rule.
    """

    def __init__(self, optimizer: BatchSizeOptimizer, max_tries: int) -> None:
        self._optimizer = optimizer
        self.outcome: Outcome[Trial] = Outcome(check_max_tries(max_tries))

    def __iter__(self) -> Recurrence:
        return self

    def __next__(self) -> Trial:
        outcome = self.outcome
        if outcome.reason is not None:
            raise StopIteration
        if outcome.trial is not None:
            last = outcome.trial
            if not last.ended:
                last.end()  # a try not used as a `with` block ends here
            if outcome.after(last) is not None:
                raise StopIteration
        try:
            trial = self._optimizer.trial()
        except BaseException:
            outcome.reason = EXCEPTION
            raise
        trial._outcome = outcome
        outcome.tries.append(trial)
        return trial


class BatchSizeOptimizer(OptimizerView):
    """The client of a bso server for one recurring job (sync; see ``AsyncBatchSizeOptimizer``).

    Args:
        job: the job's specification.
        url: the server; default ``BSO_URL``, else http://127.0.0.1:8000.
        token: sent as ``Authorization: Bearer``; default ``BSO_TOKEN``.
        energy: "auto", "nvml", "zeus", "rapl", "none", or an ``EnergyMeter``.
        on_unavailable: "fallback" (train with the default batch size, warn
            once) or "raise" (``BSOUnavailableError``).
        timeout: seconds per HTTP attempt.
        retry: attempts and backoff of the calls worth retrying.
        rank: this process's rank; default from torch.distributed or RANK.
            Only rank 0 talks to the server.
        http_client: an ``httpx.Client`` to use instead of making one.
        spool: the folder of reports kept while the server is away; default
            ``BSO_SPOOL_DIR``, else ``~/.cache/bso-client/spool``.
    """

    def __init__(
        self,
        job: JobSpec,
        *,
        url: str | None = None,
        token: str | None = None,
        energy: EnergyChoice | EnergyMeter = "auto",
        on_unavailable: OnUnavailable = "fallback",
        timeout: float = 10.0,
        retry: Retry | None = None,
        rank: int | None = None,
        http_client: httpx.Client | None = None,
        spool: str | os.PathLike[str] | None = None,
    ) -> None:
        self._session = Session(
            job,
            url=url,
            token=token,
            energy=energy,
            on_unavailable=on_unavailable,
            timeout=timeout,
            retry=retry,
            rank=rank,
            spool=spool,
        )
        self._given_client = http_client
        self._transport: SyncTransport | None = None
        self._running = 0  # trials not yet ended: the connection is kept for their reports
        self._last: Outcome[Trial] | None = None

    def _http(self) -> SyncTransport:
        if self._transport is None:
            self._transport = SyncTransport(self._session.endpoint, self._given_client)
        return self._transport

    def _send(self, call: Call, *, retry: Retry | None = None) -> Any:
        return self._http().send(call, retry=retry)

    def register(self) -> dict[str, Any]:
        """Register the job (idempotent); ``trial()`` does this the first time."""
        try:
            return self._register()
        finally:
            if self._running == 0:
                self._release()

    def _register(self) -> dict[str, Any]:
        session = self._session
        session.open_meter()
        if session.registered is None:
            session.registered = self._send(session.register_call())
        return session.registered

    def trials(self, max_tries: int = DEFAULT_MAX_TRIES) -> Recurrence:
        """One recurrence: trials until one reaches the target (at most ``max_tries``).

        Iterate it (``for trial in bso.trials(): with trial: ...``); each try
        after a run the service stopped before the target trains with the
        batch size the service gives next. ``bso.last`` then says how it ended.
        """
        recurrence = Recurrence(self, max_tries)
        self._last = recurrence.outcome
        return recurrence

    @property
    def last(self) -> Outcome[Trial] | None:
        """The latest ``trials()`` recurrence: its tries, ``reason``, ``converged``, ``cost``."""
        return self._last

    def trial(self) -> Trial:
        """Start one run: register if needed, send kept reports, get its batch size, measure."""
        session = self._session
        if not session.leader:
            return Trial(self, session.follower_state())
        try:
            self._register()
            self._replay(None, retry=None)
            answer = self._dispatch()
            state = session.dispatched_state(answer)
        except BSOUnavailableError as exc:
            self._release()
            session.on_dispatch_failure(exc)
            return Trial(self, session.fallback_state())
        except BSORejectedError as exc:
            self._release()
            session.on_dispatch_rejected(exc)  # raises but for a job that cannot proceed
            return Trial(self, session.fallback_state())
        except BaseException:
            self._release()
            raise
        self._running += 1
        OPEN_TRIALS.add(session.endpoint, state)
        return Trial(self, state)

    def _dispatch(self) -> Any:
        """Ask for a batch size; a job deleted since it was registered is registered again."""
        session = self._session
        try:
            return self._send(session.dispatch_call())
        except BSORejectedError as exc:
            if not session.job_gone(exc):
                raise
        self._register()
        return self._send(session.dispatch_call())

    def _replay(self, state: TrialState | None, *, retry: Retry | None = NO_RETRY) -> None:
        """Send the job's kept reports in order, while the server answers."""
        spool = self._session.spool()
        if spool is None or not spool.exists():
            return
        replay = spool.begin_replay()
        if replay is None:
            return
        try:
            while (call := replay.next_call()) is not None:
                try:
                    answer = self._send(call, retry=retry)
                except BSOError as exc:
                    replay.failed(exc)
                else:
                    replay.answered(answer)
        finally:
            spool.end_replay(replay)
        self._session.replayed(replay, state)

    def _report(self, state: TrialState, call: Call) -> Decision:
        session = self._session
        if state.spooled:
            self._replay(state)
            if state.server_ended:
                assert state.decision is not None
                return state.decision  # a kept report was the final one
            if state.spooled:
                return session.on_unsent(state, call)
        retry = NO_RETRY if state.degraded else None
        try:
            answer = self._send(call, retry=retry)
        except BSOUnavailableError as exc:
            return session.on_report_failure(state, call, exc)
        except BSORejectedError as exc:
            return session.on_report_rejected(state, call, exc)
        return state.answered(answer)

    def _end(self, state: TrialState, *, raise_errors: bool) -> None:
        OPEN_TRIALS.discard(state)
        call = state.end_call()
        if state.dispatch.leader and not state.dispatch.fallback:
            self._running -= 1
        try:
            if call is not None and state.spooled:
                self._replay(state)
            if call is not None and not state.server_ended:
                if state.spooled:
                    self._session.keep(state, call)  # after the reports that wait
                else:
                    self._send(call, retry=NO_RETRY if state.degraded else None)
        except BaseException as exc:
            assert call is not None
            self._session.on_end_failure(state, call, exc, raise_errors=raise_errors)
        finally:
            if self._running == 0:
                self._release()

    def _release(self) -> None:
        """Close our connections between trials (a given client stays the caller's)."""
        if self._transport is not None and self._given_client is None:
            self._transport.close()
        self._transport = None

    def close(self) -> None:
        """Release the HTTP connections and the energy meter (``with bso:`` does this)."""
        self._release()
        self._session.close_meter()

    def __enter__(self) -> BatchSizeOptimizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

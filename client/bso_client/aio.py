"""``AsyncBatchSizeOptimizer``: the same client for asyncio programs.

    bso = AsyncBatchSizeOptimizer(job=JobSpec(...))
    async for trial in bso.trials():       # tries until one reaches the target
        async with trial:
            ...
            if (await trial.report(metric=accuracy)).stop:
                ...
    bso.last.reason

``async with bso.trial() as trial`` (or ``trial = await bso.trial()``) runs one try.

Same rules as the sync client (``bso_client.session``); the energy meter is
read synchronously (a few microseconds).
"""

from __future__ import annotations

import os
import types
from collections.abc import Generator
from typing import Any

import httpx

from bso_client.errors import BSOError, BSORejectedError, BSOUnavailableError
from bso_client.http import NO_RETRY, AsyncTransport, Call, Retry
from bso_client.meters import EnergyChoice, EnergyMeter
from bso_client.recurrence import DEFAULT_MAX_TRIES, EXCEPTION, Outcome, check_max_tries
from bso_client.session import OnUnavailable, OptimizerView, Session
from bso_client.spec import JobSpec
from bso_client.trial import OPEN_TRIALS, Decision, TrialState, TrialView


class AsyncTrial(TrialView):
    """One recurrence of an asyncio training program."""

    def __init__(self, optimizer: AsyncBatchSizeOptimizer, state: TrialState) -> None:
        super().__init__(state)
        self._optimizer = optimizer
        self._outcome: Outcome[AsyncTrial] | None = None

    async def report(
        self, metric: float, *, time: float | None = None, energy: float | None = None
    ) -> Decision:
        """Report this epoch's validation ``metric``; see ``Trial.report``."""
        step = self._state.report_call(metric, time, energy)
        if isinstance(step, Decision):
            return step
        return await self._optimizer._report(self._state, step)

    async def end(self) -> None:
        """End the trial on the server (idempotent); leaving ``async with`` calls it."""
        if not self._state.ended:
            await self._optimizer._end(self._state, raise_errors=True)

    async def __aenter__(self) -> AsyncTrial:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        if exc is not None and self._outcome is not None and self._outcome.reason is None:
            self._outcome.reason = EXCEPTION
        if not self._state.ended:
            await self._optimizer._end(self._state, raise_errors=exc is None)


class AsyncRecurrence:
    """``bso.trials()`` for asyncio: ``async for trial in bso.trials(): async with trial: ...``."""

    def __init__(self, optimizer: AsyncBatchSizeOptimizer, max_tries: int) -> None:
        self._optimizer = optimizer
        self.outcome: Outcome[AsyncTrial] = Outcome(check_max_tries(max_tries))

    def __aiter__(self) -> AsyncRecurrence:
        return self

    async def __anext__(self) -> AsyncTrial:
        outcome = self.outcome
        if outcome.reason is not None:
            raise StopAsyncIteration
        if outcome.trial is not None:
            last = outcome.trial
            if not last.ended:
                await last.end()
            if outcome.after(last) is not None:
                raise StopAsyncIteration
        try:
            trial = await self._optimizer._start()
        except BaseException:
            outcome.reason = EXCEPTION
            raise
        trial._outcome = outcome
        outcome.tries.append(trial)
        return trial


class _TrialStart:
    """``await bso.trial()`` or ``async with bso.trial() as trial``."""

    def __init__(self, optimizer: AsyncBatchSizeOptimizer) -> None:
        self._optimizer = optimizer
        self._trial: AsyncTrial | None = None

    def __await__(self) -> Generator[Any, None, AsyncTrial]:
        return self._optimizer._start().__await__()

    async def __aenter__(self) -> AsyncTrial:
        self._trial = await self._optimizer._start()
        return self._trial

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        assert self._trial is not None
        await self._trial.__aexit__(exc_type, exc, tb)


class AsyncBatchSizeOptimizer(OptimizerView):
    """The asyncio twin of ``BatchSizeOptimizer``: the same arguments, awaitable calls."""

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
        http_client: httpx.AsyncClient | None = None,
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
        self._transport: AsyncTransport | None = None
        self._running = 0
        self._last: Outcome[AsyncTrial] | None = None

    def _http(self) -> AsyncTransport:
        if self._transport is None:
            self._transport = AsyncTransport(self._session.endpoint, self._given_client)
        return self._transport

    async def _send(self, call: Call, *, retry: Retry | None = None) -> Any:
        return await self._http().send(call, retry=retry)

    async def register(self) -> dict[str, Any]:
        """Register the job (idempotent); the first trial does this."""
        try:
            return await self._register()
        finally:
            if self._running == 0:
                await self._release()

    async def _register(self) -> dict[str, Any]:
        session = self._session
        session.open_meter()
        if session.registered is None:
            session.registered = await self._send(session.register_call())
        return session.registered

    def trials(self, max_tries: int = DEFAULT_MAX_TRIES) -> AsyncRecurrence:
        """One recurrence: tries until one reaches the target; see ``BatchSizeOptimizer.trials``."""
        recurrence = AsyncRecurrence(self, max_tries)
        self._last = recurrence.outcome
        return recurrence

    @property
    def last(self) -> Outcome[AsyncTrial] | None:
        """The latest ``trials()`` recurrence: its tries, ``reason``, ``converged``, ``cost``."""
        return self._last

    def trial(self) -> _TrialStart:
        """Start one run: ``async with bso.trial() as trial`` (or ``await bso.trial()``)."""
        return _TrialStart(self)

    async def _start(self) -> AsyncTrial:
        session = self._session
        if not session.leader:
            return AsyncTrial(self, session.follower_state())
        try:
            await self._register()
            await self._replay(None, retry=None)
            answer = await self._dispatch()
            state = session.dispatched_state(answer)
        except BSOUnavailableError as exc:
            await self._release()
            session.on_dispatch_failure(exc)
            return AsyncTrial(self, session.fallback_state())
        except BSORejectedError as exc:
            await self._release()
            session.on_dispatch_rejected(exc)
            return AsyncTrial(self, session.fallback_state())
        except BaseException:
            await self._release()
            raise
        self._running += 1
        OPEN_TRIALS.add(session.endpoint, state)
        return AsyncTrial(self, state)

    async def _dispatch(self) -> Any:
        """Ask for a batch size; a job deleted since it was registered is registered again."""
        session = self._session
        try:
            return await self._send(session.dispatch_call())
        except BSORejectedError as exc:
            if not session.job_gone(exc):
                raise
        await self._register()
        return await self._send(session.dispatch_call())

    async def _replay(self, state: TrialState | None, *, retry: Retry | None = NO_RETRY) -> None:
        spool = self._session.spool()
        if spool is None or not spool.exists():
            return
        replay = spool.begin_replay()
        if replay is None:
            return
        try:
            while (call := replay.next_call()) is not None:
                try:
                    answer = await self._send(call, retry=retry)
                except BSOError as exc:
                    replay.failed(exc)
                else:
                    replay.answered(answer)
        finally:
            spool.end_replay(replay)
        self._session.replayed(replay, state)

    async def _report(self, state: TrialState, call: Call) -> Decision:
        session = self._session
        if state.spooled:
            await self._replay(state)
            if state.server_ended:
                assert state.decision is not None
                return state.decision
            if state.spooled:
                return session.on_unsent(state, call)
        retry = NO_RETRY if state.degraded else None
        try:
            answer = await self._send(call, retry=retry)
        except BSOUnavailableError as exc:
            return session.on_report_failure(state, call, exc)
        except BSORejectedError as exc:
            return session.on_report_rejected(state, call, exc)
        return state.answered(answer)

    async def _end(self, state: TrialState, *, raise_errors: bool) -> None:
        OPEN_TRIALS.discard(state)
        call = state.end_call()
        if state.dispatch.leader and not state.dispatch.fallback:
            self._running -= 1
        try:
            if call is not None and state.spooled:
                await self._replay(state)
            if call is not None and not state.server_ended:
                if state.spooled:
                    self._session.keep(state, call)
                else:
                    await self._send(call, retry=NO_RETRY if state.degraded else None)
        except BaseException as exc:
            assert call is not None
            self._session.on_end_failure(state, call, exc, raise_errors=raise_errors)
        finally:
            if self._running == 0:
                await self._release()

    async def _release(self) -> None:
        if self._transport is not None and self._given_client is None:
            await self._transport.aclose()
        self._transport = None

    async def aclose(self) -> None:
        """Release the HTTP connections and the energy meter."""
        await self._release()
        self._session.close_meter()

    async def __aenter__(self) -> AsyncBatchSizeOptimizer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

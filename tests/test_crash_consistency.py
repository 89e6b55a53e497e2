"""A connection cut at any point of any write leaves the job as before or after the request.

SPEC 7: "a crash at any point leaves the database as before or after a whole
request". On PostgreSQL the service talks to the database through a proxy
(tests/support/pgproxy.py) that cuts the connection at a chosen point of the
next transaction: before each of its statements in turn, before its COMMIT,
and after its COMMIT without passing the answer on. On SQLite, which runs in
the service's process, the engine's events fail the transaction at the same
points but the last (tests/support/sqlite_cut.py). For every kind of write
(registration, dispatch in either stage, entering the bandit stage, a
dispatch that expires lapsed trials, a dispatch with an Idempotency-Key, a
final report in either stage or of a job group's job, an end, the lease
sweep), each cut must

- answer the client 503 with Retry-After, counted as "unavailable" (the HTTP
  writes), or raise an error the service classifies as "database unavailable"
  (the sweep, and a dispatch called as the service's function);
- leave the rows of the job exactly as before the request (cut before the
  COMMIT) or exactly as a request that was not cut leaves them (cut after);
- let the retry succeed on a fresh connection, with the answer a retry gets
  (a keyed dispatch cut after its COMMIT: its trial again, no second one; a
  final report retried after a cut past its COMMIT changes nothing: its
  group's shared counts do not move twice);

and at the end every job in the database passes the consistency check.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from app import service, sweeper
from app.bandit import Lease
from app.config import Settings
from app.http.app import create_app
from app.schemas import JobSpec
from app.store.engine import DatabaseFault, classify
from app.store.migrate import upgrade_head
from app.store.tables import arm, batch_size, group_batch_size, job, job_group, trial
from app.telemetry import metrics
from tests.helpers import spec
from tests.support.consistency import Acknowledged, check_consistency
from tests.support.pgproxy import Cut, PgProxy
from tests.support.server import drop_postgres_database, fresh_postgres_database, worker_name
from tests.support.sqlite_cut import SqliteCutter

LEASE = Lease(3600)
# Dispatched "in the past", so that the trials the HTTP requests dispatch (now) never lapse.
T0 = service.utcnow() - timedelta(hours=3)
LATER = T0 + timedelta(seconds=LEASE.seconds + 1)
# Columns whose values differ between two runs of the same requests.
CLOCK_COLUMNS = {"created_at", "updated_at", "start_timestamp", "end_timestamp", "lease_renewed_at"}
MAX_STATEMENTS = 20  # more statements than any write has
KEY = '"a1b2c3d4-0000-4000-8000-000000000001"'  # a key's scope is its job: one for all


class Cutter(Protocol):
    """Fails the next transaction at a cut: PgProxy, or SqliteCutter."""

    fired: bool

    def arm(self, cut: Cut) -> None: ...
    def disarm(self) -> None: ...


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def crash_url(
    request: pytest.FixtureRequest, testrun_uid: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('crash') / 'bso.db'}"
        upgrade_head(url)
        yield url
        return
    name = f"bso_crash_{testrun_uid[:12]}_{worker_name()}"
    url = fresh_postgres_database(name)
    upgrade_head(url)
    yield url
    drop_postgres_database(name)


@pytest.fixture(scope="module")
async def direct(crash_url: str) -> AsyncIterator[AsyncEngine]:
    """The checker's own connection, past the proxy and the cuts."""
    engine = create_async_engine(crash_url, poolclass=NullPool)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="module")
async def proxy(crash_url: str) -> AsyncIterator[PgProxy | None]:
    if crash_url.startswith("sqlite"):
        yield None
        return
    url = make_url(crash_url)
    async with PgProxy(url.host or "127.0.0.1", url.port or 5432) as running:
        yield running


@pytest.fixture(scope="module")
async def service_app(crash_url: str, proxy: PgProxy | None) -> AsyncIterator[FastAPI]:
    """The service, connected through the proxy; no leases, so no background sweep."""
    url = crash_url
    if proxy is not None:
        proxied = make_url(crash_url).set(host="127.0.0.1", port=proxy.port)
        url = proxied.render_as_string(hide_password=False)
    settings = Settings(database_url=url, log_level="CRITICAL", trial_lease_s=0, pool_size=4)
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(scope="module")
def cutter(service_app: FastAPI, proxy: PgProxy | None) -> Cutter:
    return proxy if proxy is not None else SqliteCutter(service_app.state.engine)


@pytest.fixture(scope="module")
async def http(service_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=service_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


@pytest.fixture(scope="module")
def acknowledged(crash_url: str) -> Acknowledged:
    """Per database."""
    return Acknowledged()


# ------------------------------------------------------------------ scenarios


@dataclass
class World:
    """What a scenario's setup and action use."""

    http: httpx.AsyncClient
    engine: AsyncEngine  # the service's, whose transactions are cut
    acknowledged: Acknowledged
    trials: dict[str, dict[str, Any]]  # the setup's trials, by name


Outcome = httpx.Response | BaseException | int
Setup = Callable[[World, str], Awaitable[None]]
Action = Callable[[World, str], Awaitable[Outcome]]


def _job(job_id: str) -> dict[str, Any]:
    # One pruning round over three batch sizes, then the bandit; a window refit reads history.
    return spec(job_id=job_id, job_id_prefix="crash", batch_sizes=[32, 64, 128],
                default_batch_size=64, num_pruning_rounds=1, window_size=2)  # fmt: skip


def _result(trial: dict[str, Any]) -> dict[str, Any]:
    seconds = 10.0 + trial["batch_size"] / 16  # each batch size its own cost
    return {**trial, "time": seconds, "energy": seconds * 150, "metric": 0.95, "current_epoch": 1}


async def _register(world: World, job_id: str) -> None:
    response = await world.http.post("/jobs", json=_job(job_id))
    assert response.status_code == 201, response.text
    world.acknowledged.jobs.add(job_id)


async def _dispatch(world: World, job_id: str, name: str) -> None:
    response = await world.http.get("/jobs/batch_size", params={"job_id": job_id})
    assert response.status_code == 200, response.text
    _note_dispatch(world, response.json())
    world.trials[name] = response.json()


async def _finish(world: World, name: str) -> None:
    response = await world.http.post("/report", json=_result(world.trials[name]))
    assert response.status_code == 200, response.text
    _note_result(world, world.trials[name], response.json())


def _note_dispatch(world: World, body: dict[str, Any]) -> None:
    world.acknowledged.dispatched[(body["job_id"], body["trial_number"])] = body["batch_size"]


def _note_result(world: World, sent: dict[str, Any], answer: dict[str, Any]) -> None:
    key = (sent["job_id"], sent["trial_number"])
    world.acknowledged.results[key] = (_result(sent)["time"], _result(sent)["energy"],
                                       answer["converged"])  # fmt: skip


async def _pruned(world: World, job_id: str) -> None:
    """Registered, and every pruning exploration converged: the next dispatch starts the bandit."""
    await _register(world, job_id)
    for name in ("first", "second", "third"):
        await _dispatch(world, job_id, name)
        await _finish(world, name)


async def _in_bandit(world: World, job_id: str) -> None:
    await _pruned(world, job_id)
    await _dispatch(world, job_id, "pull")


async def _running(world: World, job_id: str) -> None:
    await _register(world, job_id)
    await _dispatch(world, job_id, "first")


async def _grouped_running(world: World, job_id: str) -> None:
    """A job of its own group (named as the job, so each run has a fresh one), running."""
    response = await world.http.post("/jobs", json={**_job(job_id), "group": job_id})
    assert response.status_code == 201, response.text
    assert response.json()["group"] == job_id
    world.acknowledged.jobs.add(job_id)
    await _dispatch(world, job_id, "first")


async def _lapsed(world: World, job_id: str) -> None:
    """A job whose exploration and Concurrent trial were dispatched a lease ago."""
    job_spec = JobSpec.model_validate(_job(job_id))
    await service.register_job(world.engine, job_spec, now=T0)
    world.acknowledged.jobs.add(job_id)
    for _ in range(2):
        await service.dispatch_trial(world.engine, job_id, now=T0, lease=LEASE)


async def _two_lapsed(world: World, job_id: str) -> None:
    for suffix in ("a", "b"):
        await _lapsed(world, f"{job_id}-{suffix}")


async def _nothing(world: World, job_id: str) -> None:
    return None


async def register(world: World, job_id: str) -> Outcome:
    response = await world.http.post("/jobs", json=_job(job_id))
    if response.status_code in (200, 201):
        world.acknowledged.jobs.add(job_id)
    return response


async def dispatch(world: World, job_id: str) -> Outcome:
    response = await world.http.get("/jobs/batch_size", params={"job_id": job_id})
    if response.status_code == 200:
        _note_dispatch(world, response.json())
    return response


async def keyed_dispatch(world: World, job_id: str) -> Outcome:
    """A dispatch with an Idempotency-Key: a retry of a committed one answers its trial."""
    response = await world.http.get(
        "/jobs/batch_size", params={"job_id": job_id}, headers={"Idempotency-Key": KEY}
    )
    if response.status_code == 200:
        _note_dispatch(world, response.json())
    return response


def report(name: str) -> Action:
    async def action(world: World, job_id: str) -> Outcome:
        sent = world.trials[name]
        response = await world.http.post("/report", json=_result(sent))
        if response.status_code == 200:
            _note_result(world, sent, response.json())
        return response

    return action


async def end(world: World, job_id: str) -> Outcome:
    sent = world.trials["first"]
    response = await world.http.patch("/trials", json=sent)
    if response.status_code == 200:
        assert response.json()["status"] == "Failed", response.text
        world.acknowledged.ended.add((sent["job_id"], sent["trial_number"]))
    return response


async def expiring_dispatch(world: World, job_id: str) -> Outcome:
    try:
        made = await service.dispatch_trial(world.engine, job_id, now=LATER, lease=LEASE)
    except Exception as exc:
        return exc
    world.acknowledged.dispatched[(job_id, made.trial_number)] = made.batch_size
    return 200


async def sweep(world: World, job_id: str) -> Outcome:
    try:
        return await sweeper.expire_leases(world.engine, now=LATER, lease=LEASE)
    except Exception as exc:
        return exc


SCENARIOS: dict[str, tuple[Setup, Action]] = {
    "registration": (_nothing, register),
    "dispatch in the pruning stage": (_register, dispatch),
    "dispatch with an Idempotency-Key": (_register, keyed_dispatch),
    "dispatch that starts the bandit stage": (_pruned, dispatch),
    "dispatch in the bandit stage": (_in_bandit, dispatch),
    "dispatch that expires lapsed trials": (_lapsed, expiring_dispatch),
    "final report in the pruning stage": (_running, report("first")),
    "final report in the bandit stage (window refit)": (_in_bandit, report("pull")),
    "final report of a group's job": (_grouped_running, report("first")),
    "end of a running trial": (_running, end),
    "lease sweep": (_two_lapsed, sweep),
}


# ------------------------------------------------------------------ checks


def _succeeded(outcome: Outcome) -> bool:
    if isinstance(outcome, httpx.Response):
        return outcome.status_code in (200, 201)
    return not isinstance(outcome, BaseException)


def _failed_as_unavailable(outcome: Outcome) -> str | None:
    """None when the outcome is the answer to a lost connection; else what it was."""
    if isinstance(outcome, httpx.Response):
        retry_after = outcome.headers.get("retry-after")
        if outcome.status_code == 503 and retry_after and "message" in outcome.json():
            return None
        return f"{outcome.status_code} {outcome.headers} {outcome.text}"
    if isinstance(outcome, BaseException):
        fault = classify(outcome)
        return None if fault is DatabaseFault.UNAVAILABLE else f"{fault}: {outcome!r}"
    return f"succeeded: {outcome}"


def _unavailable_count() -> float:
    """bso_database_errors_total{kind="unavailable"} of this process (the in-process service)."""
    labels = {"kind": "unavailable"}
    return metrics.REGISTRY.get_sample_value("bso_database_errors_total", labels) or 0.0


async def snapshot(engine: AsyncEngine, job_id: str) -> dict[str, list[tuple[Any, ...]]]:
    """The rows of the jobs whose id starts with ``job_id`` and of the groups whose
    name does, without clock values or ids."""
    tables = {
        "job": (job, job.c.job_id), "batch_size": (batch_size, batch_size.c.job_id),
        "trial": (trial, trial.c.job_id), "arm": (arm, arm.c.job_id),
        "job_group": (job_group, job_group.c.name),
        "group_batch_size": (group_batch_size, group_batch_size.c.group_name),
    }  # fmt: skip
    named = {"job_id", "group", "name", "group_name"}
    rows: dict[str, list[tuple[Any, ...]]] = {}
    async with engine.connect() as conn:
        for name, (table, key) in tables.items():
            columns = [c for c in table.c if c.name not in CLOCK_COLUMNS]
            query = select(*columns).where(key.startswith(job_id))
            result = await conn.execute(query.order_by(*table.primary_key.columns))
            rows[name] = [
                tuple(v.removeprefix(job_id) if c.name in named and v is not None else v
                      for c, v in zip(columns, r, strict=True))
                for r in result
            ]  # fmt: skip
    return rows


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_a_cut_at_any_point_of_a_write_leaves_it_whole_or_undone(
    scenario: str,
    http: httpx.AsyncClient,
    service_app: FastAPI,
    cutter: Cutter,
    direct: AsyncEngine,
    acknowledged: Acknowledged,
) -> None:
    setup, action = SCENARIOS[scenario]
    slug = f"crash-{list(SCENARIOS).index(scenario)}"  # job ids start with the prefix
    world = World(http, service_app.state.engine, acknowledged, {})

    # The request, uncut: what "after" looks like.
    reference = f"{slug}.ref"
    await setup(world, reference)
    before = await snapshot(direct, reference)
    outcome = await action(world, reference)
    assert _succeeded(outcome), outcome
    after = await snapshot(direct, reference)
    assert after != before, "the request changed nothing"

    cuts = [Cut.before_statement(k) for k in range(1, MAX_STATEMENTS + 1)]
    cuts.append(Cut.before_commit())
    if service_app.state.engine.dialect.name == "postgresql":
        cuts.append(Cut.after_commit())
    statements_cut, ran_whole = 0, False
    for index, cut in enumerate(cuts):
        if ran_whole and cut.statement is not None:
            continue
        job_id = f"{slug}.{index:02d}"
        world.trials = {}
        await setup(world, job_id)
        assert await snapshot(direct, job_id) == before
        unavailable = _unavailable_count()
        cutter.arm(cut)
        try:
            outcome = await action(world, job_id)
        finally:
            fired = cutter.fired
            cutter.disarm()
        if cut.statement is not None and not fired:
            # No k-th statement: the request ran whole; no later one has more.
            assert _succeeded(outcome), outcome
            assert await snapshot(direct, job_id) == after
            ran_whole = True
            continue
        assert fired, f"{cut}: the request never reached it"
        statements_cut += cut.statement is not None
        assert _failed_as_unavailable(outcome) is None, (cut, _failed_as_unavailable(outcome))
        if isinstance(outcome, httpx.Response):
            assert _unavailable_count() == unavailable + 1, "a 503 not counted as unavailable"
        left = await snapshot(direct, job_id)
        assert left == (after if cut.commit == "after" else before), (cut, left)

        # Retried on a fresh connection.
        retried = await action(world, job_id)
        assert _succeeded(retried), (cut, retried)
        if cut.commit != "after" or scenario == "dispatch with an Idempotency-Key":
            assert await snapshot(direct, job_id) == after, cut  # a keyed retry: no new trial
        else:
            _check_retry_of_committed(scenario, retried)
            if scenario.startswith("final report"):  # applied once: nothing moves again
                assert await snapshot(direct, job_id) == after, (cut, "retry changed rows")
    assert statements_cut >= 1, "no statement was cut"

    await check_consistency(direct, acknowledged)


def _check_retry_of_committed(scenario: str, retried: Outcome) -> None:
    """A retry of a request that was applied gets the answer a retry gets."""
    if scenario.startswith("final report"):
        assert isinstance(retried, httpx.Response)
        assert retried.json()["stop_train"] is True, retried.text
        assert "already reported" in retried.json()["message"], retried.text
    elif scenario == "registration":
        assert isinstance(retried, httpx.Response) and retried.status_code == 200
    elif scenario == "lease sweep":
        assert retried == 0, "a retried sweep found the trials the cut one expired"

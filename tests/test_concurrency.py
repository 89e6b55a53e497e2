"""Many clients at once against two uvicorn worker processes sharing one database.

Correctness must rest on the database (SPEC 7): trial numbers unique and
contiguous, every final report recorded exactly once, no 5xx but a 503 (a
request rolled back after waiting BSO_LOCK_TIMEOUT_MS for a lock, sent again),
and the job still walks from pruning into the bandit stage. On PostgreSQL
(row locks) and on one SQLite file (one writer at a time, BEGIN IMMEDIATE).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from app.store.migrate import upgrade_head
from tests.helpers import spec
from tests.support.consistency import Acknowledged, check_consistency
from tests.support.server import (
    Server,
    bso_args,
    child_processes,
    clean_env,
    drop_postgres_database,
    free_port,
    fresh_postgres_database,
    running_server,
    worker_name,
    worker_processes,
)

CLIENTS = 32
MAX_EPOCHS = 3
SEED = 20231
MIN_ROUNDS = 2  # per client, at least; then until it ran one in the bandit stage
MAX_ROUNDS = 25
RETRIES_ON_503 = 20  # each waits BSO_LOCK_TIMEOUT_MS at most: the run ends, however slow


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, testrun_uid: str
) -> Iterator[str]:
    """A fresh, migrated database: PostgreSQL, or one SQLite file both workers share."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('concurrency-db') / 'bso.db'}"
        upgrade_head(url)
        yield url
        return
    name = f"bso_conc_{testrun_uid[:12]}_{worker_name()}"  # concurrent runs never collide
    url = fresh_postgres_database(name)
    upgrade_head(url)
    try:
        yield url
    finally:
        drop_postgres_database(name)


@pytest.fixture(scope="module")
def server(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``bso serve --workers 2`` on the database."""
    port = free_port()
    folder = tmp_path_factory.mktemp("concurrency")
    env = clean_env(BSO_DATABASE_URL=database, BSO_LOG_LEVEL="WARNING")
    args = bso_args("serve", "--workers", "2", "--host", "127.0.0.1", "--port", str(port))
    with running_server(
        args, port=port, env=env, log_dir=folder, cwd=folder, ready_path="/readyz"
    ) as running:
        workers = worker_processes(running.process.pid)
        assert len(workers) == 2, (
            f"expected 2 workers, found {child_processes(running.process.pid)}"
        )
        yield running


async def check_database(url: str, acknowledged: Acknowledged) -> None:
    """The consistency check (tests/support/consistency.py) on the server's database."""
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        await check_consistency(engine, acknowledged)
    finally:
        await engine.dispose()


@pytest.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=2 * CLIENTS, max_keepalive_connections=2 * CLIENTS)
    async with httpx.AsyncClient(base_url=server.base_url, limits=limits, timeout=30) as client:
        yield client


@dataclass
class Final:
    time: float
    energy: float
    converged: bool


@dataclass
class Record:
    """What the clients saw; the read API must agree with it afterwards."""

    statuses: list[tuple[str, str, int]] = field(default_factory=list)
    dispatched: dict[int, int] = field(default_factory=dict)  # trial number -> batch size
    finals: dict[int, Final] = field(default_factory=dict)
    ended_early: set[int] = field(default_factory=set)  # PATCHed before any final report
    problems: list[str] = field(default_factory=list)
    rolled_back: list[tuple[str, str, str]] = field(default_factory=list)  # 503s, sent again
    bandit_reached: asyncio.Event = field(default_factory=asyncio.Event)

    async def call(
        self, http: httpx.AsyncClient, method: str, path: str, **kwargs: Any
    ) -> httpx.Response:
        """The answer; a 503 (rolled back, SPEC 7) is sent again, as every client does.

        A loaded machine may keep a request waiting for a job's lock longer
        than BSO_LOCK_TIMEOUT_MS: that 503 is the contract, not a failure, and
        the trial numbers' check shows it left nothing behind.
        """
        for _ in range(RETRIES_ON_503):
            try:
                response = await http.request(method, path, **kwargs)
            except httpx.TransportError as exc:  # a dropped connection counts as a server error
                self.statuses.append((method, path, 599))
                request = http.build_request(method, path, **kwargs)
                return httpx.Response(599, text=f"{type(exc).__name__}: {exc}", request=request)
            if response.status_code != 503:
                break
            self.rolled_back.append((method, path, response.text))
            await asyncio.sleep(0.05)
        self.statuses.append((method, path, response.status_code))
        return response


async def one_client(http: httpx.AsyncClient, job_id: str, index: int, record: Record) -> None:
    """A recurring training job's script, run again and again."""
    rng = random.Random(SEED + index)
    rounds = rounds_in_bandit = 0
    while rounds < MAX_ROUNDS and (rounds < MIN_ROUNDS or rounds_in_bandit < 1):
        rounds += 1
        if record.bandit_reached.is_set():
            rounds_in_bandit += 1
        await one_trial(http, job_id, rng, record)
        if not record.bandit_reached.is_set():
            job = await record.call(http, "GET", f"/jobs/{job_id}")
            if job.status_code == 200 and job.json()["stage"] == "MAB":
                record.bandit_reached.set()


async def one_trial(
    http: httpx.AsyncClient, job_id: str, rng: random.Random, record: Record
) -> None:
    response = await record.call(http, "GET", "/jobs/batch_size", params={"job_id": job_id})
    if response.status_code != 200:
        record.problems.append(f"dispatch: {response.status_code} {response.text}")
        return
    trial = response.json()
    number, batch_size = trial["trial_number"], trial["batch_size"]
    if number in record.dispatched:
        record.problems.append(f"trial number {number} was dispatched twice")
    record.dispatched[number] = batch_size

    # 64 always converges, so pruning keeps at least one batch size.
    converge = batch_size == 64 or rng.random() < 0.7
    final_epoch = rng.randint(1, MAX_EPOCHS) if converge else MAX_EPOCHS
    abandon_at = rng.randint(1, final_epoch) if rng.random() < 0.15 else None
    seconds = rng.uniform(5.0, 15.0) * (batch_size / 64) ** 0.5
    watts = rng.uniform(150.0, 250.0)
    for epoch in range(1, final_epoch + 1):
        await asyncio.sleep(0)  # let the others interleave
        if epoch == abandon_at:
            ended = await record.call(http, "PATCH", "/trials", json=trial)
            record.ended_early.add(number)
            if ended.status_code != 200 or ended.json()["status"] != "Failed":
                record.problems.append(f"early end of {number}: {ended.status_code} {ended.text}")
            return
        final = epoch == final_epoch
        body = {
            **trial,
            "time": epoch * seconds,
            "energy": epoch * seconds * watts,
            "metric": 0.95 if final and converge else 0.1,
            "current_epoch": epoch,
        }
        answer = await record.call(http, "POST", "/report", json=body)
        if answer.status_code != 200:
            record.problems.append(f"report on {number}: {answer.status_code} {answer.text}")
            return
        verdict = answer.json()
        if verdict["stop_train"] != final or (final and verdict["converged"] != converge):
            record.problems.append(f"trial {number} epoch {epoch}: unexpected {verdict}")
            return
        if not final:
            continue
        record.finals[number] = Final(body["time"], body["energy"], verdict["converged"])
        if rng.random() < 0.3:  # a retried final report gets the same answer
            again = await record.call(http, "POST", "/report", json=body)
            same = again.status_code == 200 and (
                again.json()["stop_train"],
                again.json()["converged"],
            ) == (True, verdict["converged"])
            if not same:
                record.problems.append(f"retry of {number}: {again.status_code} {again.text}")
        if rng.random() < 0.5:  # Zeus's client always PATCHes at exit: a no-op now
            ended = await record.call(http, "PATCH", "/trials", json=trial)
            if ended.status_code != 200 or ended.json()["status"] != "Succeeded":
                record.problems.append(f"late end of {number}: {ended.status_code} {ended.text}")


async def all_trials(http: httpx.AsyncClient, job_id: str) -> list[dict[str, Any]]:
    trials: list[dict[str, Any]] = []
    after: int | None = None
    while True:
        params: dict[str, Any] = {"limit": 500, **({"after": after} if after else {})}
        page = await http.get(f"/jobs/{job_id}/trials", params=params)
        assert page.status_code == 200, page.text
        trials += page.json()["items"]
        after = page.json()["next_after"]
        if after is None:
            return trials


async def test_many_clients_on_one_job_keep_trials_contiguous_and_results_exact(
    http: httpx.AsyncClient, server: Server, database: str
) -> None:
    job_id = "conc-one"
    job = spec(
        job_id=job_id,
        job_id_prefix="conc",
        num_pruning_rounds=1,
        beta_knob=None,
        max_epochs=MAX_EPOCHS,
        mab_seed=None,
    )
    assert (await http.post("/jobs", json=job)).status_code == 201
    record = Record()
    # No overall cap: every request ends within the client's timeout (30 s) and
    # is sent at most RETRIES_ON_503 times, so a slow machine runs longer, not wrong.
    await asyncio.gather(*(one_client(http, job_id, i, record) for i in range(CLIENTS)))

    statuses = Counter(status for _, _, status in record.statuses)
    assert statuses == {200: len(record.statuses)}, (statuses, record.problems[:5], server.log())
    assert not record.problems, record.problems[:10]

    trials = await all_trials(http, job_id)
    dispatches = record.statuses.count(("GET", "/jobs/batch_size", 200))
    numbers = [t["trial_number"] for t in trials]
    assert numbers == list(range(1, dispatches + 1)), "trial numbers are not 1..N"
    assert {t["trial_number"]: t["batch_size"] for t in trials} == record.dispatched
    state = (await http.get(f"/jobs/{job_id}")).json()
    assert state["num_trials"] == len(record.dispatched)

    by_number = {t["trial_number"]: t for t in trials}
    for number, final in record.finals.items():
        trial = by_number[number]
        assert trial["status"] == "Succeeded", trial
        assert (trial["time"], trial["energy"], trial["converged"]) == (
            final.time,
            final.energy,
            final.converged,
        ), trial
    for number in record.ended_early:
        assert by_number[number]["status"] == "Failed", by_number[number]
        assert by_number[number]["time"] is None, by_number[number]
    assert record.finals.keys() | record.ended_early == by_number.keys(), "a trial was lost"
    assert not record.finals.keys() & record.ended_early

    # Through pruning into the bandit stage, with each arm exactly once.
    assert state["stage"] == "MAB", state
    types = [t["type"] for t in trials]
    assert "MAB" in types and "Exploration" in types, Counter(types)
    first_mab = types.index("MAB")
    assert set(types[first_mab:]) == {"MAB"}, "pruning trials after the bandit began"
    arms = (await http.get(f"/jobs/{job_id}/arms")).json()
    arm_sizes = [a["batch_size"] for a in arms]
    assert arm_sizes == sorted(set(arm_sizes)), f"arms not unique and ascending: {arm_sizes}"
    first_exploration: dict[int, dict[str, Any]] = {}
    for trial in trials:
        if trial["type"] == "Exploration" and trial["status"] != "Failed":
            first_exploration.setdefault(trial["batch_size"], trial)
    assert arm_sizes == sorted(bs for bs, t in first_exploration.items() if t["converged"])
    assert {t["batch_size"] for t in trials if t["type"] == "MAB"} <= set(arm_sizes)

    # Every Succeeded trial fed its arm once: an arm refitted in the bandit
    # stage counts all of its batch size's results, no more, no fewer.
    costs: dict[int, list[float]] = defaultdict(list)
    for trial in trials:
        if trial["status"] == "Succeeded":
            costs[trial["batch_size"]].append(trial["cost"])
    pulled = {t["batch_size"] for t in trials if t["type"] == "MAB" and t["status"] == "Succeeded"}
    for arm in arms:
        if arm["batch_size"] in pulled:
            observed = costs[arm["batch_size"]]
            assert arm["num_observations"] == len(observed), (arm, observed)
            assert arm["param_mean"] == pytest.approx(-sum(observed) / len(observed)), arm

    # And what the database holds is what whole requests leave, every answer in it.
    acknowledged = Acknowledged(
        jobs={job_id},
        dispatched={(job_id, n): bs for n, bs in record.dispatched.items()},
        results={(job_id, n): (f.time, f.energy, f.converged) for n, f in record.finals.items()},
        ended={(job_id, n) for n in record.ended_early},
    )
    await check_database(database, acknowledged)


def _registration(job_id: str, **overrides: Any) -> dict[str, Any]:
    return spec(job_id=job_id, job_id_prefix="reg", **overrides)


async def test_concurrent_registrations_of_distinct_ids_all_succeed(
    http: httpx.AsyncClient,
) -> None:
    ids = [f"reg-distinct-{i:02d}" for i in range(CLIENTS)]
    responses = await asyncio.gather(*(http.post("/jobs", json=_registration(i)) for i in ids))
    assert [r.status_code for r in responses] == [201] * CLIENTS, [r.text for r in responses]
    assert [r.json()["job_id"] for r in responses] == ids
    listed = await http.get("/jobs", params={"job_id_prefix": "reg", "limit": 500})
    assert [j["job_id"] for j in listed.json()["items"] if j["job_id"] in ids] == ids


async def test_concurrent_registrations_of_one_id_create_it_exactly_once(
    http: httpx.AsyncClient,
) -> None:
    body = _registration("reg-same")
    responses = await asyncio.gather(*(http.post("/jobs", json=body) for _ in range(CLIENTS)))
    assert sorted(r.status_code for r in responses) == [200] * (CLIENTS - 1) + [201], [
        r.text for r in responses if r.status_code not in (200, 201)
    ]
    assert all(r.json() == responses[0].json() for r in responses)


async def test_concurrent_registrations_of_one_id_with_two_specs_keep_the_winner(
    http: httpx.AsyncClient,
) -> None:
    bodies = [_registration("reg-race", max_epochs=10 + i % 2) for i in range(CLIENTS)]
    responses = await asyncio.gather(*(http.post("/jobs", json=b) for b in bodies))
    created = [b for b, r in zip(bodies, responses, strict=True) if r.status_code == 201]
    assert len(created) == 1, [r.status_code for r in responses]
    winner = created[0]["max_epochs"]
    for b, r in zip(bodies, responses, strict=True):
        expected = {201, 200} if b["max_epochs"] == winner else {409}
        assert r.status_code in expected, (b["max_epochs"], winner, r.status_code, r.text)
    stored = (await http.get("/jobs/reg-race")).json()
    assert stored["max_epochs"] == winner

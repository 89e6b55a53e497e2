"""The Idempotency-Key of a dispatch on both databases: one trial per key, within its lease.

Time is injected (the service's ``now``) where a lease must run out; the rest
goes through the HTTP app. Across processes and replicas, with a lost answer
retried by the client: tests/test_idempotent_dispatch.py.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app import reads, service
from app.bandit import Lease
from app.schemas import TrialRead
from tests.helpers import register

LEASE = Lease(3600)
T0 = service.utcnow().replace(microsecond=0)


async def _keyed(client: httpx.AsyncClient, job_id: str, key: str) -> httpx.Response:
    return await client.get(
        "/jobs/batch_size", params={"job_id": job_id}, headers={"Idempotency-Key": key}
    )


async def _trials(app: FastAPI, job_id: str) -> list[TrialRead]:
    page = await reads.list_trials(
        app.state.engine, job_id, status=None, trial_type=None, after=None, limit=500
    )
    return page.items


async def test_a_dispatch_repeated_with_its_key_answers_the_same_trial(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    job_id = await register(client)
    first = await _keyed(client, job_id, '"7f1c9a52-0b8e-4d35-9a77-2f4f6a0c1e01"')
    assert first.status_code == 200, first.text
    # The bare spelling is the same key; each repeat answers the same trial.
    for key in ("7f1c9a52-0b8e-4d35-9a77-2f4f6a0c1e01", '"7f1c9a52-0b8e-4d35-9a77-2f4f6a0c1e01"'):
        again = await _keyed(client, job_id, key)
        assert (again.status_code, again.json()) == (200, first.json())
    assert [t.trial_number for t in await _trials(app, job_id)] == [1]
    # Another key, or none, is another dispatch (a Concurrent trial: the exploration runs).
    other = await _keyed(client, job_id, "another-key")
    unkeyed = await client.get("/jobs/batch_size", params={"job_id": job_id})
    assert (other.json()["trial_number"], unkeyed.json()["trial_number"]) == (2, 3)
    assert (await _keyed(client, job_id, "another-key")).json()["trial_number"] == 2
    assert len(await _trials(app, job_id)) == 3


async def test_a_key_belongs_to_its_job(app: FastAPI, client: httpx.AsyncClient) -> None:
    """Reused with another job, a key is that job's key: its own trial, each answered again."""
    job_a = await register(client, job_id="job-keyed-a")
    job_b = await register(
        client, job_id="job-keyed-b", batch_sizes=[16, 32], default_batch_size=16
    )
    on_a = (await _keyed(client, job_a, "shared-key")).json()
    on_b = (await _keyed(client, job_b, "shared-key")).json()
    assert (on_a["job_id"], on_a["trial_number"], on_a["batch_size"]) == (job_a, 1, 64)
    assert (on_b["job_id"], on_b["trial_number"], on_b["batch_size"]) == (job_b, 1, 16)
    assert (await _keyed(client, job_a, "shared-key")).json() == on_a
    assert (await _keyed(client, job_b, "shared-key")).json() == on_b
    assert len(await _trials(app, job_a)) == len(await _trials(app, job_b)) == 1


async def _dispatch(app: FastAPI, job_id: str, seconds: float, key: str) -> tuple[int, int]:
    trial = await service.dispatch_trial(
        app.state.engine, job_id, now=T0 + timedelta(seconds=seconds), lease=LEASE,
        idempotency_key=key,
    )  # fmt: skip
    return trial.trial_number, trial.batch_size


async def test_a_key_holds_for_its_trials_lease_only(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    job_id = await register(client)
    assert await _dispatch(app, job_id, 0, "k") == (1, 64)
    assert await _dispatch(app, job_id, LEASE.seconds, "k") == (1, 64)  # the last instant
    # Past the lease the trial is expired (Failed) and the key makes a new trial,
    # which holds it from then on.
    assert await _dispatch(app, job_id, LEASE.seconds + 1, "k") == (2, 64)
    assert await _dispatch(app, job_id, LEASE.seconds + 2, "k") == (2, 64)
    first, second = await _trials(app, job_id)
    assert (first.status, first.failure_reason) == ("Failed", "LeaseExpired")
    assert second.status == "Dispatched"


async def test_without_leases_a_key_holds_while_its_trial_runs(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    job_id = await register(client)
    engine, key = app.state.engine, "no-lease"
    first = await service.dispatch_trial(engine, job_id, now=T0, idempotency_key=key)
    later = T0 + timedelta(days=400)
    assert await service.dispatch_trial(engine, job_id, now=later, idempotency_key=key) == first
    assert len(await _trials(app, job_id)) == 1


async def test_a_key_whose_trial_ended_makes_a_new_trial(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    job_id = await register(client)
    trial = (await _keyed(client, job_id, "k")).json()
    ended = await client.patch("/trials", json=trial, headers={"Idempotency-Key": "end-1"})
    assert (ended.status_code, ended.json()["status"]) == (200, "Failed")
    again = await _keyed(client, job_id, "k")
    assert again.json()["trial_number"] == 2
    assert (await _keyed(client, job_id, "k")).json()["trial_number"] == 2
    assert [t.status for t in await _trials(app, job_id)] == ["Failed", "Dispatched"]


async def test_a_seeded_job_draws_nothing_for_a_repeat(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """A repeat writes nothing: a seeded bandit job decides as if it never came."""
    plain, keyed = "job-seeded-plain", "job-seeded-keyed"
    for job_id in (plain, keyed):
        await register(client, job_id=job_id, num_pruning_rounds=0, mab_seed=11)
    answers: dict[str, list[int]] = {plain: [], keyed: []}
    for n in range(6):
        answers[plain].append((await client.get("/jobs/batch_size", params={"job_id": plain}))
                              .json()["batch_size"])  # fmt: skip
        for _ in range(3):
            body = (await _keyed(client, keyed, f"key-{n}")).json()
        answers[keyed].append(body["batch_size"])
    assert answers[keyed] == answers[plain]
    assert len(await _trials(app, keyed)) == 6


BAD_KEYS: list[tuple[str, str]] = [
    ("", "empty"),
    ('""', "empty"),
    ('"abc', "unbalanced double quotes"),
    ('abc"', "unbalanced double quotes"),
    ("a" * 256, "256 characters, more than 255"),
    (f'"{"a" * 256}"', "256 characters, more than 255"),
    ("two words", "a space"),
    ('"in\\"side"', "a space, a control or non-ASCII character"),
    ("caf\u00e9", "non-ASCII"),
]


@pytest.mark.parametrize(("key", "said"), BAD_KEYS)
async def test_a_malformed_key_is_refused_with_400_on_every_write(
    app: FastAPI, client: httpx.AsyncClient, key: str, said: str
) -> None:
    job_id = await register(client)
    headers = [(b"Idempotency-Key", key.encode("latin-1"))]
    dispatched = await client.get("/jobs/batch_size", params={"job_id": job_id}, headers=headers)
    assert dispatched.status_code == 400, dispatched.text
    message = dispatched.json()["message"]
    assert message.startswith("Idempotency-Key: ") and said in message, message
    assert "1 to 255 visible ASCII characters" in message
    assert await _trials(app, job_id) == []
    trial: dict[str, Any] = (await client.get("/jobs/batch_size", params={"job_id": job_id})).json()
    result = {**trial, "time": 1.0, "energy": 1.0, "metric": 0.1, "current_epoch": 1}
    assert (await client.post("/report", json=result, headers=headers)).status_code == 400
    assert (await client.patch("/trials", json=trial, headers=headers)).status_code == 400
    (running,) = await _trials(app, job_id)
    assert running.status == "Dispatched"


async def test_a_repeated_header_is_refused(app: FastAPI, client: httpx.AsyncClient) -> None:
    job_id = await register(client)
    headers = [("Idempotency-Key", "one"), ("Idempotency-Key", "two")]
    answer = await client.get("/jobs/batch_size", params={"job_id": job_id}, headers=headers)
    assert answer.status_code == 400
    assert answer.json()["message"] == "Idempotency-Key: sent 2 times; send one key per request."
    assert await _trials(app, job_id) == []


async def test_the_longest_key_is_kept_whole(app: FastAPI, client: httpx.AsyncClient) -> None:
    job_id = await register(client)
    longest = "~" * 254 + "x"
    first = await _keyed(client, job_id, longest)
    assert first.status_code == 200
    assert (await _keyed(client, job_id, f'"{longest}"')).json() == first.json()
    assert (await _keyed(client, job_id, "~" * 255)).json()["trial_number"] == 2

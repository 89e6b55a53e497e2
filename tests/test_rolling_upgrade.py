"""A rolling upgrade: the previous release serves beside this one on the upgraded schema.

The previous release's ``app`` and ``migrations`` come out of git
(tests/support/releases.py) and run as a real server on a PostgreSQL
database that this checkout migrated to its head, next to a server of this
checkout on the same database, as pods of both releases do while a
Deployment rolls. A Zeus client's whole life (register, dispatch, reports,
end, reads, delete) then alternates between the two, and so do two jobs of
one job group (the newest migration made the groups' tables): every answer
2xx, and the group's statistics count this release's final reports once each.
A migration that breaks the expand/contract rule of docs/upgrades.md fails
it: e.g. a NOT NULL column without a default that the old code's inserts
leave out (500 on the old server), a renamed or dropped column (500), or
data one release writes that the other cannot read (a 4xx/5xx, or answers
that disagree).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.store.migrate import alembic_config, head_revision, upgrade_head
from tests.helpers import spec
from tests.support.releases import Release, export, previous_release
from tests.support.server import (
    REPO_ROOT,
    Server,
    clean_env,
    drop_postgres_database,
    free_port,
    fresh_postgres_database,
    running_server,
    uvicorn_args,
    worker_name,
)


@pytest.fixture(scope="module")
def previous(tmp_path_factory: pytest.TempPathFactory) -> tuple[Release, Path]:
    folder = tmp_path_factory.mktemp("previous-release")
    return export(previous_release(), folder), folder


@pytest.fixture
def servers(
    previous: tuple[Release, Path], tmp_path: Path, testrun_uid: str
) -> Iterator[tuple[Server, Server]]:
    """(old, new): each release's server on one database at this checkout's head."""
    _, code = previous
    name = f"bso_roll_{testrun_uid[:12]}_{worker_name()}"
    url = fresh_postgres_database(name)
    upgrade_head(url)
    old_port, new_port = free_port(), free_port()
    env = clean_env(BSO_DATABASE_URL=url, BSO_LOG_LEVEL="WARNING")
    old_env = {**env, "PYTHONPATH": str(code)}  # its app and migrations, this venv's libraries
    try:
        with (
            running_server(
                uvicorn_args(old_port), port=old_port, env=old_env, log_dir=tmp_path, cwd=code
            ) as old,
            running_server(
                uvicorn_args(new_port), port=new_port, env=env, log_dir=tmp_path, cwd=REPO_ROOT
            ) as new,
        ):
            yield old, new
    finally:
        drop_postgres_database(name)


class Client:
    """Calls that must never answer 5xx, each on the server it is given."""

    def __init__(self, old: Server, new: Server) -> None:
        self.servers = {"old": old, "new": new}

    def call(self, on: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        server = self.servers[on]
        response = httpx.request(method, server.base_url + path, timeout=30, **kwargs)
        assert response.status_code < 500, f"{on}: {method} {path}: {response.text}\n{server.log()}"
        return response

    def ok(self, on: str, method: str, path: str, **kwargs: Any) -> Any:
        """A call that must succeed (2xx); its JSON."""
        response = self.call(on, method, path, **kwargs)
        assert 200 <= response.status_code < 300, f"{on}: {method} {path}: {response.text}"
        return response.json()


def parent_of_head() -> str | None:
    from alembic.script import ScriptDirectory

    newest = ScriptDirectory.from_config(alembic_config()).get_revision("head")
    assert newest is not None and isinstance(newest.down_revision, str), "one parent"
    return newest.down_revision


def common(a: dict[str, Any], b: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both bodies restricted to the fields both releases know."""
    keys = a.keys() & b.keys()
    return {k: a[k] for k in keys}, {k: b[k] for k in keys}


def test_the_previous_release_serves_a_zeus_client_beside_this_one_on_the_new_schema(
    previous: tuple[Release, Path], servers: tuple[Server, Server]
) -> None:
    release, _ = previous
    old, new = servers
    print(f"previous release {release.commit[:12]} (schema {release.head}) on {head_revision()}")
    if not os.environ.get("BSO_UPGRADE_FROM"):
        assert release.head == parent_of_head(), release
    client = Client(old, new)
    # The old release stays ready on the newer schema, so its pods keep serving.
    assert client.call("old", "GET", "/readyz").status_code == 200, "old release unready"

    job = spec(job_id="roll-1", job_id_prefix="roll", batch_sizes=[32, 64],
               num_pruning_rounds=1, mab_num_explorations=1)  # fmt: skip
    assert client.call("old", "POST", "/jobs", json=job).status_code == 201
    assert client.call("new", "POST", "/jobs", json=job).status_code == 200  # the same spec
    other = spec(job_id="roll-2", job_id_prefix="roll", batch_sizes=[32, 64])
    assert client.call("new", "POST", "/jobs", json=other).status_code == 201
    assert client.call("old", "POST", "/jobs", json=other).status_code == 200

    # Recurrences of the job, every step on the other release than the one before.
    for recurrence in range(6):
        first, second = ("old", "new") if recurrence % 2 == 0 else ("new", "old")
        dispatched = client.call(first, "GET", "/jobs/batch_size", params={"job_id": "roll-1"})
        assert dispatched.status_code == 200
        trial = dispatched.json()
        if recurrence == 2:  # this one's training process dies: ended without a result
            assert client.call(second, "PATCH", "/trials", json=trial).status_code == 200
            continue
        seconds = 10.0 * trial["batch_size"] / 32
        keep_going = {**trial, "time": seconds, "energy": 100 * seconds, "metric": 0.5,
                      "current_epoch": 1}  # fmt: skip
        answer = client.call(second, "POST", "/report", json=keep_going).json()
        assert answer["stop_train"] is False, answer
        final = {**keep_going, "time": 2 * seconds, "energy": 200 * seconds, "metric": 0.95,
                 "current_epoch": 2}  # fmt: skip
        answer = client.call(first, "POST", "/report", json=final).json()
        assert (answer["stop_train"], answer["converged"]) == (True, True), answer
        retried = client.call(second, "POST", "/report", json=final).json()
        assert (retried["stop_train"], retried["converged"]) == (True, True), retried
        assert client.call(second, "PATCH", "/trials", json=trial).status_code == 200

    # Both releases read the same job, trials and arms.
    for path in ("/jobs/roll-1", "/jobs/roll-1/trials", "/jobs/roll-1/arms", "/jobs"):
        seen_old = client.call("old", "GET", path).json()
        seen_new = client.call("new", "GET", path).json()
        if isinstance(seen_old, dict) and "items" in seen_old:
            seen_old, seen_new = seen_old["items"], seen_new["items"]
        if isinstance(seen_old, list):
            assert len(seen_old) == len(seen_new), path
            for a, b in zip(seen_old, seen_new, strict=True):
                assert common(a, b)[0] == common(a, b)[1], path
        else:
            assert common(seen_old, seen_new)[0] == common(seen_old, seen_new)[1], path
    job_read = client.call("new", "GET", "/jobs/roll-1").json()
    assert job_read["stage"] == "MAB", job_read
    trials = client.call("new", "GET", "/jobs/roll-1/trials").json()["items"]
    assert [t["status"] for t in trials].count("Failed") == 1, trials

    # A job group's jobs (the newest migration is the groups one) across both releases.
    grouped_job_across_releases(client)

    assert client.call("old", "DELETE", "/jobs", params={"job_id": "roll-1"}).status_code == 200
    assert client.call("new", "GET", "/jobs/roll-1").status_code == 404
    assert client.call("new", "DELETE", "/jobs", params={"job_id": "roll-2"}).status_code == 200
    assert client.call("old", "GET", "/jobs/roll-2").status_code == 404


def grouped_job_across_releases(client: Client) -> None:
    """Two jobs of one group (A40, V100), each step on the other release than the one before.

    A previous release that does not know groups serves a group's job as a job of
    its own (every answer 2xx), and its final reports do not add to the group's
    statistics (docs/upgrades.md); this release's do, each exactly once. A
    previous release that knows groups (its GET /groups answers) counts its own.
    """
    group = "roll-group"
    shared = {"job_id_prefix": "roll", "group": group, "batch_sizes": [32, 64],
              "default_batch_size": 32, "num_pruning_rounds": 1, "max_epochs": 4,
              "beta_knob": None}  # fmt: skip
    members = {
        gpu: spec(job_id=f"roll-g-{gpu}", gpu_model=gpu, **shared) for gpu in ("A40", "V100")
    }
    for body in members.values():
        created = client.call("new", "POST", "/jobs", json=body)
        assert created.status_code == 201 and created.json()["group"] == group, created.text
    # The old release, re-registering without the field it does not know: the same job.
    without_group = {k: v for k, v in members["A40"].items() if k != "group"}
    assert client.call("old", "POST", "/jobs", json=without_group).status_code == 200

    old_knows_groups = client.call("old", "GET", f"/groups/{group}").status_code == 200
    counted: dict[int, list[int]] = {}  # batch size -> epochs of the counted final reports
    for recurrence in range(8):
        job_id = list(members.values())[recurrence % 2]["job_id"]
        first, second = ("old", "new") if recurrence % 4 < 2 else ("new", "old")
        trial = client.ok(first, "GET", "/jobs/batch_size", params={"job_id": job_id})
        assert trial["job_id"] == job_id and trial["batch_size"] in (32, 64), trial
        epochs = 2 if trial["batch_size"] == 32 else 3
        for epoch in range(1, epochs + 1):
            on = second if epoch < epochs else first
            metric = 0.95 if epoch == epochs else 0.5
            result = {**trial, "time": 5.0 * epoch, "energy": 500.0 * epoch, "metric": metric,
                      "current_epoch": epoch}  # fmt: skip
            answer = client.ok(on, "POST", "/report", json=result)
            assert answer["stop_train"] is (epoch == epochs), (on, answer)
        assert answer["converged"] is True, answer
        if first == "new" or old_knows_groups:
            counted.setdefault(trial["batch_size"], []).append(epochs)
        retried = client.ok(second, "POST", "/report", json=result)  # counted once, not twice
        assert retried["stop_train"] is True, retried
        assert client.ok(second, "PATCH", "/trials", json=trial)["status"] == "Succeeded"

    read = client.ok("new", "GET", f"/groups/{group}")
    assert (read["target_metric"], read["max_epochs"]) == (0.9, 4), read
    assert sorted(m["job_id"] for m in read["members"]) == sorted(
        b["job_id"] for b in members.values()
    )
    stats = {row["batch_size"]: row for row in read["batch_sizes"]}
    assert set(stats) == {32, 64}
    for batch_size, row in stats.items():
        epochs_seen = counted.get(batch_size, [])
        assert (row["runs"], row["converged"], row["exhausted"]) == (
            len(epochs_seen), len(epochs_seen), 0
        ), (batch_size, row, counted)  # fmt: skip
        assert row["min_epochs"] == min(epochs_seen, default=None), row
    # Half the finals were new's.
    assert sum(len(e) for e in counted.values()) == (8 if old_knows_groups else 4), counted
    for body in members.values():  # both releases read the group's jobs alike
        path = f"/jobs/{body['job_id']}"
        seen_old, seen_new = common(client.ok("old", "GET", path), client.ok("new", "GET", path))
        assert seen_old == seen_new, path

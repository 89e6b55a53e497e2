"""``bso import-zeus`` on sources it cannot take whole: one clear line each, never a traceback.

The sources are SQLite files with Zeus's real schema (made by Zeus's own
code, tests/zeus_server/run.py) and rows written as Zeus writes them.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest

from app.store.migrate import upgrade_head
from tests.support.server import free_port
from tests.support.zeus_server import Imported, create_zeus_schema, import_zeus

START = "2026-11-30 10:00:00.000000"
END = "2026-11-30 11:00:00.000000"


@contextmanager
def connected(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection that commits and closes."""
    with closing(sqlite3.connect(path)) as db, db:
        yield db


@pytest.fixture(scope="module")
def zeus_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("zeus-template") / "zeus.db"
    create_zeus_schema(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture
def source(zeus_template: Path, tmp_path: Path) -> Path:
    """An empty Zeus database of this test's own."""
    return Path(shutil.copy(zeus_template, tmp_path / "zeus.db"))


def add_job(
    path: Path,
    job_id: str,
    *,
    trials: Sequence[tuple[Any, ...]] = (),
    stage: str = "Pruning",
    **overrides: Any,
) -> None:
    """A job as Zeus stores it, with batch sizes 16 and 32; ``trials`` as
    (number, batch size, type, status, end, time, energy, converged)."""
    job = {
        "job_id": job_id, "job_id_prefix": "team", "default_batch_size": 32,
        "higher_is_better_metric": 1, "eta_knob": 0.5, "beta_knob": 2.0, "target_metric": 0.9,
        "max_epochs": 4, "num_pruning_rounds": 1, "window_size": 0, "max_power": 300.0,
        "number_of_gpus": 1, "gpu_model": "NVIDIA A40", "mab_prior_mean": 0.0,
        "mab_prior_precision": 0.0, "mab_num_explorations": 2, "mab_seed": None,
        "mab_random_generator_state": None, "exp_default_batch_size": 32, "stage": stage,
        "min_cost": None, "min_cost_batch_size": 32,
    } | overrides  # fmt: skip
    with connected(path) as db:
        db.execute(
            f'INSERT INTO "Job" ({", ".join(job)}) VALUES ({", ".join("?" * len(job))})',
            list(job.values()),
        )
        db.executemany('INSERT INTO "BatchSize" VALUES (?, ?)', [(job_id, 16), (job_id, 32)])
        db.executemany(
            'INSERT INTO "Trial" (job_id, trial_number, batch_size, type, status, start_timestamp,'
            " end_timestamp, time, energy, converged) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(job_id, n, bs, kind, status, START, *rest) for n, bs, kind, status, *rest in trials],
        )


def one_error_line(run: Imported) -> str:
    assert run.status == 1, run
    assert "Traceback" not in run.stderr
    (line,) = run.stderr.strip().splitlines()
    return line


def job_ids(database: Path) -> list[str]:
    with connected(database) as db:
        return [r[0] for r in db.execute("SELECT job_id FROM job ORDER BY job_id")]


GOOD_TRIALS = [
    (1, 32, "Exploration", "Succeeded", END, 100.0, 20000.0, 1),
    (2, 16, "Exploration", "Dispatched", None, None, None, None),
]


def test_unreachable_sources(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    port = free_port()  # nothing listens there
    runs = import_zeus(
        f"sqlite:///{missing}", f"sqlite+aiosqlite:///{tmp_path / 'a.db'}", args=["--dry-run"]
    )
    runs += import_zeus(
        f"postgresql://postgres@127.0.0.1:{port}/zeus", f"sqlite+aiosqlite:///{tmp_path / 'b.db'}"
    )
    runs += import_zeus(
        f"mysql+pymysql://root:secret@127.0.0.1:{port}/zeus",
        f"sqlite+aiosqlite:///{tmp_path / 'c.db'}",
    )
    lines = [one_error_line(run) for run in runs]
    assert lines[0] == f"error: cannot reach the source database sqlite:///{missing}: no such file"
    assert lines[1].startswith(
        f"error: cannot reach the source database postgresql+asyncpg://postgres@127.0.0.1:{port}"
    )
    assert lines[2].startswith(
        f"error: cannot reach the source database mysql+aiomysql://root:***@127.0.0.1:{port}"
    )
    assert not missing.exists()  # a typo never creates an empty source


def test_a_database_that_is_not_zeus(tmp_path: Path) -> None:
    ours = tmp_path / "bso.db"
    upgrade_head(f"sqlite+aiosqlite:///{ours}")  # our own database, named by mistake
    (run,) = import_zeus(f"sqlite:///{ours}", f"sqlite+aiosqlite:///{tmp_path / 'target.db'}")
    assert one_error_line(run) == (
        f"error: sqlite:///{ours} is not a Zeus batch size optimizer database: it has none of "
        "the tables Job, BatchSize, GaussianTsArmState, Trial"
    )


def test_a_zeus_schema_of_another_shape(source: Path, tmp_path: Path) -> None:
    with connected(source) as db:
        db.execute('ALTER TABLE "Trial" DROP COLUMN converged')
        db.execute('ALTER TABLE "Job" ADD COLUMN priority INTEGER')
    (run,) = import_zeus(f"sqlite:///{source}", f"sqlite+aiosqlite:///{tmp_path / 'target.db'}")
    assert one_error_line(run) == (
        f"error: sqlite:///{source} is a Zeus schema of an unknown shape (this importer reads "
        "Zeus 0.16's): table Job has unknown columns priority; table Trial lacks converged"
    )


def test_rows_our_schema_refuses_are_named_and_the_rest_is_imported(
    source: Path, tmp_path: Path
) -> None:
    long_id = "team-" + "x" * 300  # Zeus allows 400 characters, we 256
    add_job(source, "team-ok", trials=GOOD_TRIALS)
    add_job(source, long_id)
    add_job(source, "team-no-energy", trials=[(1, 32, "Exploration", "Succeeded", END, 1.0,
                                                None, 1)])  # fmt: skip
    add_job(source, "team-mab", stage="MAB")
    add_job(source, "team-negative", min_cost=-1.0)
    target = tmp_path / "target.db"

    (run,) = import_zeus(f"sqlite:///{source}", f"sqlite+aiosqlite:///{target}")

    assert run.status == 1, run
    assert run.stderr == ""
    lines = run.stdout.splitlines()
    assert lines[0] == "Database schema upgraded from empty to " + lines[0].rsplit(" ", 1)[1]
    assert lines[1:] == [
        "refused job 'team-mab': its Job row: in the MAB stage but without arms",
        "refused job 'team-negative': our schema refuses a row (CHECK constraint failed: "
        "ck_job_min_cost)",
        "refused job 'team-no-energy': trial 1: Succeeded without its end_timestamp, time, "
        "energy or converged",
        "imported job 'team-ok': 2 batch sizes, 2 trials (1 Dispatched, leased from now), "
        "0 arms, stage Pruning",
        f"refused job '{long_id}': its Job row: job_id: String should have at most 256 characters",
        "Jobs: 1 imported, 0 skipped, 4 refused. Trials imported: 2 (1 Dispatched). "
        "Arms imported: 0.",
    ]
    assert job_ids(target) == ["team-ok"]  # each job in its own transaction


def test_dry_run_then_twice_then_a_changed_spec(source: Path, tmp_path: Path) -> None:
    add_job(source, "team-ok", trials=GOOD_TRIALS)
    target = tmp_path / "target.db"
    url, target_url = f"sqlite:///{source}", f"sqlite+aiosqlite:///{target}"

    (dry,) = import_zeus(url, target_url, args=["--dry-run"])
    assert dry.status == 0, dry
    assert dry.stdout.splitlines() == [
        "The target database has no schema yet: every job would be imported.",
        "would import job 'team-ok': 2 batch sizes, 2 trials (1 Dispatched, leased from now), "
        "0 arms, stage Pruning",
        "Jobs: 1 would be imported, 0 skipped, 0 refused. Trials would be imported: 2 "
        "(1 Dispatched). Arms would be imported: 0. Dry run: nothing was written.",
    ]
    assert not target.exists()

    first, second = (import_zeus(url, target_url)[0] for _ in range(2))
    assert first.status == 0 and "imported job 'team-ok'" in first.stdout, first
    assert second.status == 0, second
    assert second.stdout.splitlines()[1:] == [
        "skipped job 'team-ok': already here with the same spec",
        "Jobs: 0 imported, 1 skipped, 0 refused. Trials imported: 0 (0 Dispatched). "
        "Arms imported: 0.",
    ]

    with connected(source) as db:
        db.execute("UPDATE \"Job\" SET eta_knob = 0.7 WHERE job_id = 'team-ok'")
    (changed,) = import_zeus(url, target_url)
    assert changed.status == 1, changed
    assert (
        "refused job 'team-ok': already here with another spec (Job 'team-ok' is already "
        "registered with a different eta_knob. Use a new job_id for a different configuration.)"
    ) in changed.stdout.splitlines()

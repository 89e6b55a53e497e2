"""One ``bso import-zeus`` run: each Zeus job read, mapped, and written in its own transaction.

What happens to each job is said as it happens (imported, skipped, refused),
then counted in a :class:`Summary`. The mapping is app/zeus_import/mapping.py's,
the reading app/zeus_import/source.py's, the writing the repository's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from app.errors import JobSpecMismatchError
from app.service import confirm_registered
from app.store import jobs
from app.store.engine import in_transaction, lock_free
from app.zeus_import.mapping import MappedJob, RowRefusedError, map_job
from app.zeus_import.source import SourceError, job_ids, open_source, read_job


@dataclass
class Summary:
    """What an import did (or, dry, would do)."""

    imported: int = 0
    skipped: int = 0
    refused: int = 0
    trials: int = 0
    dispatched: int = 0
    arms: int = 0

    def describe(self, *, dry_run: bool) -> str:
        verb = "would be imported" if dry_run else "imported"
        text = (
            f"Jobs: {self.imported} {verb}, {self.skipped} skipped, {self.refused} refused. "
            f"Trials {verb}: {self.trials} ({self.dispatched} Dispatched). "
            f"Arms {verb}: {self.arms}."
        )
        return f"{text} Dry run: nothing was written." if dry_run else text


async def _write(engine: AsyncEngine, mapped: MappedJob, *, dry_run: bool) -> str | None:
    """Import one job in one transaction; None if imported, else why it was skipped.

    Raises:
        JobSpecMismatchError: a job with this id and another spec is present.
    """
    run = lock_free if dry_run else in_transaction
    existing = await run(engine, _existing_or_insert, mapped, dry_run)
    if existing is None:
        return None
    confirm_registered(mapped.spec, existing)  # raises on a different spec
    return "already here with the same spec"


def _existing_or_insert(conn: Connection, mapped: MappedJob, dry_run: bool) -> jobs.JobState | None:
    """The job already stored under the mapped one's id; None if absent or just inserted."""
    job_id = mapped.job["job_id"]
    existing = jobs.load_job(conn, job_id)
    if existing is None and not dry_run:
        if jobs.insert_imported_job(
            conn, mapped.job, mapped.batch_sizes, mapped.trials, mapped.arms
        ):
            return None
        existing = jobs.load_job(conn, job_id)  # inserted meanwhile
    return existing


async def import_zeus(
    source: URL,
    engine: AsyncEngine | None,
    *,
    dry_run: bool,
    echo: Callable[[str], None],
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Summary:
    """Import every job of ``source`` into ``engine``'s database, saying what happens to each.

    ``engine`` None (a dry run on a database not migrated yet): nothing to compare with.

    Raises:
        SourceError: the source is unreachable or not a Zeus 0.16 database.
    """
    summary = Summary()
    verb = "would import" if dry_run else "imported"
    async with open_source(source) as src:
        try:
            ids = await job_ids(src)
        except sa_exc.DBAPIError as exc:
            raise SourceError(f"cannot read the source's jobs: {exc.orig}") from exc
        for job_id in ids:
            try:
                zeus = await read_job(src, job_id)
            except sa_exc.DBAPIError as exc:
                raise SourceError(f"cannot read job {job_id!r}: {exc.orig}") from exc
            try:
                mapped = map_job(zeus, now=clock())
                skipped = None if engine is None else await _write(engine, mapped, dry_run=dry_run)
            except RowRefusedError as exc:
                echo(f"refused job {job_id!r}: {exc}")
                summary.refused += 1
                continue
            except JobSpecMismatchError as exc:
                echo(f"refused job {job_id!r}: already here with another spec ({exc.message})")
                summary.refused += 1
                continue
            except sa_exc.IntegrityError as exc:
                echo(f"refused job {job_id!r}: our schema refuses a row ({exc.orig})")
                summary.refused += 1
                continue
            if skipped is not None:
                echo(f"skipped job {job_id!r}: {skipped}")
                summary.skipped += 1
                continue
            echo(f"{verb} job {job_id!r}: {mapped.describe()}")
            summary.imported += 1
            summary.trials += len(mapped.trials)
            summary.dispatched += mapped.dispatched
            summary.arms += len(mapped.arms)
    return summary

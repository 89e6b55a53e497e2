"""``bso import-zeus SOURCE_URL [--dry-run]``: move a Zeus server's jobs into BSO_DATABASE_URL.

The work is app/zeus_import/run.py's; this module turns it into a command that
migrates the target first, prints one line per job and a summary, and ends
with one line (never a traceback) when a database cannot be used. Database
modules are imported only when the command runs (see app/cli/main.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from app.config import Settings

if TYPE_CHECKING:
    from sqlalchemy.engine import URL


def register(cli: typer.Typer, read_settings: Callable[[], Settings]) -> None:
    """Add ``import-zeus`` to the ``bso`` command; ``read_settings`` exits on a bad setting."""

    @cli.command("import-zeus")
    def import_zeus(
        source: Annotated[
            str,
            typer.Argument(
                metavar="SOURCE_URL",
                help="The Zeus server's database (its ZEUS_BSO_DATABASE_URL), e.g. "
                "mysql+pymysql://user:password@host:3306/zeus, "
                "postgresql://user@host/zeus or sqlite:///zeus.db.",
            ),
        ],
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Say what would be imported; write nothing.")
        ] = False,
    ) -> None:
        """Copy a Zeus 0.16 BSO database's jobs into BSO_DATABASE_URL (migrated first).

        Stop the Zeus server first. Safe to run again: a job already here with
        the same spec is skipped, one with another spec refused. Exits 1 if a
        job was refused or a database cannot be used.
        """
        from sqlalchemy import exc as sa_exc

        from app.store.migrate import upgrade_head
        from app.zeus_import.source import SourceError, source_url

        settings = read_settings()
        if settings.is_in_memory:
            typer.echo("An in-memory database lives in the server that holds it: import into "
                       "a file or a PostgreSQL database.", err=True)  # fmt: skip
            raise typer.Exit(2)
        try:
            url = source_url(source)
            if not dry_run:
                typer.echo(upgrade_head(settings.database_url).describe())
            # A dry run never creates a SQLite file.
            absent = settings.is_sqlite and not Path(settings.sqlite_path).exists()
            refused = asyncio.run(_run(settings, url, dry_run=dry_run, absent=absent))
        except SourceError as exc:
            _fail(str(exc))
        except (sa_exc.DBAPIError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "orig", None) or exc
            _fail(f"cannot use the target database (BSO_DATABASE_URL): {reason}")
        if refused:
            raise typer.Exit(1)


async def _run(settings: Settings, source: URL, *, dry_run: bool, absent: bool) -> int:
    """Import, printing as it goes; how many jobs were refused.

    ``absent``: the target is a SQLite file that does not exist (yet).
    """
    from app.store.engine import create_engine
    from app.store.migrate import current_revision, head_revision
    from app.zeus_import.run import import_zeus

    engine = None
    if not (dry_run and absent):
        engine = create_engine(settings)
    try:
        target = engine
        if dry_run and (engine is None or await current_revision(engine) != head_revision()):
            typer.echo("The target database has no schema yet: every job would be imported.")
            target = None
        summary = await import_zeus(source, target, dry_run=dry_run, echo=typer.echo)
    finally:
        if engine is not None:
            await engine.dispose()
    typer.echo(summary.describe(dry_run=dry_run))
    return summary.refused


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)

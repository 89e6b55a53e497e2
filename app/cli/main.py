"""The ``bso`` command: serve, migrate, tokens, simulate, jobs.

Nothing imported here imports prometheus-client: ``bso serve`` must set
PROMETHEUS_MULTIPROC_DIR before it is first imported (see app/telemetry/metrics.py).
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from app.cli.import_zeus import register as register_import_zeus
from app.cli.jobs import register as register_jobs
from app.cli.simulate import register as register_simulate
from app.cli.tokens import register as register_tokens
from app.config import Settings, get_settings

cli = typer.Typer(
    name="bso",
    help="Batch size optimizer: a Zeus-compatible service that learns energy-efficient "
    "batch sizes for recurring training jobs.",
    no_args_is_help=True,
    add_completion=False,
    # A traceback must not print local variables: they may hold a token.
    pretty_exceptions_show_locals=False,
)
logger = logging.getLogger("app.cli")


def _setting_names(loc: tuple[int | str, ...]) -> str:
    """Both environment names of a setting, e.g. BSO_LOG_LEVEL / ZEUS_BSO_LOG_LEVEL."""
    field = str(loc[0]).removeprefix("BSO_").removeprefix("ZEUS_BSO_").lower() if loc else ""
    names = [f"BSO_{field.upper()}"]
    if field in {"database_url", "log_level", "echo_sql"}:
        names.append(f"ZEUS_BSO_{field.upper()}")
    return " / ".join(names)


def _shown(error: Any) -> str:
    """The bad value, except a database URL (it may hold a password)."""
    if error.get("loc") and "DATABASE_URL" in str(error["loc"][0]).upper():
        return ""
    return f" (got {error.get('input')!r})"


def _settings() -> Settings:
    """Read the settings, or exit with a message naming the bad setting."""
    try:
        return get_settings()
    except ValidationError as exc:
        lines = [f"  {_setting_names(e['loc'])}: {e['msg']}{_shown(e)}" for e in exc.errors()]
        typer.echo("Invalid configuration:\n" + "\n".join(lines), err=True)
        raise typer.Exit(2) from exc


@cli.command()
def migrate() -> None:
    """Upgrade the configured database to the latest schema (alembic upgrade head).

    Safe to run several at once: they take turns (a PostgreSQL advisory lock).
    """
    from app.store.migrate import MigrationError, upgrade_head

    settings = _settings()
    if settings.is_in_memory:
        typer.echo("An in-memory database is migrated by the server that holds it.", err=True)
        raise typer.Exit(2)

    def waiting() -> None:
        typer.echo("Another `bso migrate` is upgrading this database: waiting for it.", err=True)

    try:
        upgrade = upgrade_head(settings.database_url, on_wait=waiting)
    except MigrationError as exc:
        typer.echo(f"Migration failed: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(upgrade.describe())


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind [BSO_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [BSO_PORT].")] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Worker processes [BSO_WORKERS].")
    ] = None,
) -> None:
    """Serve the API. The embedded SQLite default is migrated automatically first."""
    from app.cli.serve import serve as run_server
    from app.cli.serve import uvicorn_config
    from app.store.migrate import upgrade_head
    from app.telemetry.log import configure_logging

    settings = _settings()
    if settings.is_in_memory and (workers or settings.workers) > 1:
        typer.echo("An in-memory database lives in one process: serve it with one worker.",
                   err=True)  # fmt: skip
        raise typer.Exit(2)
    configure_logging(settings.log_level, settings.log_format)
    # uvicorn shuts down gracefully on SIGTERM, then raises it again: as SystemExit
    # (not the default handler's instant death) it lets the cleanup below run.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    if settings.is_embedded_default and not settings.is_in_memory:
        logger.info("%s", upgrade_head(settings.database_url).describe())
    config = uvicorn_config(
        settings,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers or settings.workers,
    )
    with _metrics_directory():
        run_server(config)


def _exit_on_signal(signum: int, _: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def _metrics_directory() -> Iterator[None]:
    """PROMETHEUS_MULTIPROC_DIR for the workers: the operator's, or a fresh one removed after.

    Every worker writes its metrics there, so /metrics counts all of them.
    """
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        os.makedirs(given, exist_ok=True)
        logger.info("metrics of all workers are collected in %s", given)
        yield
        return
    with tempfile.TemporaryDirectory(prefix="bso-metrics-") as directory:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        logger.info("metrics of all workers are collected in %s", directory)
        try:
            yield
        finally:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]


def main() -> None:
    """Entry point of the console script."""
    cli()


register_tokens(cli, _settings)
register_simulate(cli)
register_jobs(cli)
register_import_zeus(cli, _settings)


if __name__ == "__main__":
    main()

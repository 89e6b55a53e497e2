"""The ``bso`` command: serve, migrate, simulate."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from app.config import Settings, get_settings
from app.sim.command import register as register_simulate

cli = typer.Typer(
    name="bso",
    help="Batch size optimizer: a Zeus-compatible service that learns energy-efficient "
    "batch sizes for recurring training jobs.",
    no_args_is_help=True,
    add_completion=False,
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
    """Upgrade the configured database to the latest schema (alembic upgrade head)."""
    from app.migrate import upgrade_head

    settings = _settings()
    if settings.is_in_memory:
        typer.echo("An in-memory database is migrated by the server that holds it.", err=True)
        raise typer.Exit(2)
    typer.echo(upgrade_head(settings.database_url).describe())


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind [BSO_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [BSO_PORT].")] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Worker processes [BSO_WORKERS].")
    ] = None,
) -> None:
    """Serve the API. The embedded SQLite default is migrated automatically first."""
    import uvicorn

    from app.migrate import upgrade_head

    settings = _settings()
    if settings.is_in_memory and (workers or settings.workers) > 1:
        typer.echo("An in-memory database lives in one process: serve it with one worker.",
                   err=True)  # fmt: skip
        raise typer.Exit(2)
    if settings.is_embedded_default and not settings.is_in_memory:
        logger.info("%s", upgrade_head(settings.database_url).describe())
    uvicorn.run(
        "app.main:app",
        host=host or settings.host,
        port=port or settings.port,
        workers=workers or settings.workers,
        log_level=settings.log_level.lower(),
        proxy_headers=True,
        # Bounds on header size and on the time to send a request (app/http_limits.py).
        http="app.http_limits:LimitedHttpToolsProtocol",
        h11_max_incomplete_event_size=settings.max_header_bytes,
    )


def main() -> None:
    """Entry point of the console script."""
    cli()


register_simulate(cli)


if __name__ == "__main__":
    main()

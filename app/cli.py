"""The ``bso`` command: serve, migrate, tokens, simulate."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from pydantic import ValidationError

from app.config import Settings, get_settings
from app.roles import Role
from app.sim.command import register as register_simulate

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")

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
    )


# ------------------------------------------------------------------ tokens

tokens = typer.Typer(
    help="API tokens for BSO_AUTH=required, on BSO_DATABASE_URL (as `bso migrate`).",
    no_args_is_help=True,
)
cli.add_typer(tokens, name="tokens")


def _on_database(work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Run ``work`` on the configured database, once it is at the latest schema.

    Exits with a message (never a traceback) when it is not there yet, cannot
    be reached, or refuses the request.
    """
    from app.db import DATABASE_ERRORS, create_engine
    from app.errors import DomainError
    from app.migrate import current_revision, head_revision

    settings = _settings()
    if settings.is_in_memory:
        typer.echo("An in-memory database lives in the server that holds it: no tokens here.",
                   err=True)  # fmt: skip
        raise typer.Exit(2)
    if settings.is_sqlite and not Path(settings.sqlite_path).exists():
        typer.echo(f"No database at {settings.sqlite_path}: set BSO_DATABASE_URL, or run "
                   "`bso migrate` first.", err=True)  # fmt: skip
        raise typer.Exit(2)

    async def run() -> T:
        engine = create_engine(settings)
        try:
            current, head = await current_revision(engine), head_revision()
            if current != head:
                typer.echo(f"The database schema is at {current or 'nothing'}, not {head}: "
                           "run `bso migrate` first.", err=True)  # fmt: skip
                raise typer.Exit(2)
            return await work(engine)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except DomainError as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(1) from exc
    except DATABASE_ERRORS as exc:
        typer.echo(f"The database cannot be reached: {type(exc).__name__}.", err=True)
        raise typer.Exit(1) from exc


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@tokens.command("create")
def create_token(
    name: Annotated[str, typer.Argument(help="A unique name, e.g. team-a or ci.")],
    role: Annotated[Role, typer.Option(help="viewer: reads; trainer: also train; admin: all.")],
    prefix: Annotated[
        list[str] | None,
        typer.Option(help="Trainer only: a job_id_prefix it may train (repeat; none: every)."),
    ] = None,
) -> None:
    """Create a token; its secret is the last line of stdout, shown only this once."""
    from app import tokens as token_store
    from app.service import utcnow

    created = _on_database(
        lambda engine: token_store.create_token(engine, name, role, prefix or (), now=utcnow())
    )
    scope = ""
    if role is Role.TRAINER:
        scope = f", job_id_prefixes {', '.join(created.info.prefixes) or 'all'}"
    typer.echo(f"Created token {name!r} ({role}{scope}). Only its hash is stored: copy it now. "
               "Send it as `Authorization: Bearer <token>`, or as the password of HTTP Basic.",
               err=True)  # fmt: skip
    typer.echo(created.token)


@tokens.command("list")
def list_tokens() -> None:
    """List tokens: name, role, prefixes, created, revoked (never their secrets)."""
    from app import tokens as token_store

    rows = [("NAME", "ROLE", "PREFIXES", "CREATED", "REVOKED")]
    for info in _on_database(token_store.list_tokens):
        scope = ",".join(info.prefixes) or ("(all)" if info.role is Role.TRAINER else "-")
        rows.append((info.name, info.role, scope, _when(info.created_at), _when(info.revoked_at)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        typer.echo("  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]))


@tokens.command("revoke")
def revoke_token(name: Annotated[str, typer.Argument(help="The token's name.")]) -> None:
    """Revoke a token: every server refuses it within BSO_AUTH_CACHE_S seconds."""
    from app import tokens as token_store
    from app.service import utcnow

    revocation = _on_database(lambda engine: token_store.revoke_token(engine, name, now=utcnow()))
    if revocation.already:
        typer.echo(f"Token {name!r} was already revoked at {_when(revocation.info.revoked_at)}.")
    else:
        typer.echo(f"Revoked token {name!r}; servers refuse it within a few seconds.")


def main() -> None:
    """Entry point of the console script."""
    cli()


register_simulate(cli)


if __name__ == "__main__":
    main()

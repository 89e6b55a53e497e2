"""``bso tokens create/list/revoke``: API tokens, on BSO_DATABASE_URL directly.

Like ``bso migrate``, these act on the configured database (they are how the
first admin token comes to exist), through the use cases of app/tokens.py.
The database modules are imported only when a command runs, so that ``bso
serve`` imports no more than it did (see app/cli/main.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from app.config import Settings
from app.roles import Role

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")

tokens = typer.Typer(
    name="tokens",
    help="API tokens for BSO_AUTH=required, on BSO_DATABASE_URL (as `bso migrate`).",
    no_args_is_help=True,
)
_read_settings: Callable[[], Settings] = Settings


def register(cli: typer.Typer, read_settings: Callable[[], Settings]) -> None:
    """Add ``tokens`` to the ``bso`` command; ``read_settings`` exits on a bad setting."""
    global _read_settings
    _read_settings = read_settings
    cli.add_typer(tokens)


def _on_database(work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Run ``work`` on the configured database, once it is at the latest schema.

    Exits with a message (never a traceback) when it is not there yet, cannot
    be reached, or refuses the request.
    """
    from app.errors import DomainError
    from app.store.engine import DATABASE_ERRORS, create_engine
    from app.store.migrate import check_schema

    settings = _read_settings()
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
            schema = await check_schema(engine)  # a newer one serves, as for the server
            if not schema.serves:
                typer.echo(f"The database schema is at {schema.current or 'nothing'}, not "
                           f"{schema.head}: run `bso migrate` first.", err=True)  # fmt: skip
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

    now = datetime.now(UTC)
    created = _on_database(
        lambda engine: token_store.create_token(engine, name, role, prefix or (), now=now)
    )
    scope = ""
    if role is Role.TRAINER:
        scope = f", job_id_prefixes {', '.join(created.info.prefixes) or 'all'}"
    # Only the token goes to stdout: TOKEN=$(bso tokens create ...) captures it alone.
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

    now = datetime.now(UTC)
    revocation = _on_database(lambda engine: token_store.revoke_token(engine, name, now=now))
    if revocation.already:
        typer.echo(f"Token {name!r} was already revoked at {_when(revocation.info.revoked_at)}.")
    else:
        typer.echo(f"Revoked token {name!r}; servers refuse it within a few seconds.")

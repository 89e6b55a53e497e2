"""API tokens: only their hashes are stored (app/tokens.py makes and checks them)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Row, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.store.rows import insert_if_absent
from app.store.tables import UTCDateTime, token

TokenRow = Row[Any]  # a row of the token table

# Any conflict (the name, or on a rare collision the random id): nothing inserted.
_INSERT_TOKEN = insert_if_absent(token, token.c.token_id)
_TOKEN_BY_ID = select(token).where(token.c.token_id == bindparam("token_id"))
_TOKEN_BY_NAME = select(token).where(token.c.name == bindparam("name"))
_REVOKE_TOKEN = (
    update(token)
    .where(token.c.name == bindparam("k_name"), token.c.revoked_at.is_(None))
    .values(revoked_at=bindparam("now", type_=UTCDateTime()))
)


async def insert_token(conn: AsyncConnection, values: Mapping[str, Any]) -> bool:
    """Insert a token row; False if its name or id is taken."""
    statement = _INSERT_TOKEN[conn.dialect.name]
    return (await conn.execute(statement, dict(values))).first() is not None


async def token_by_id(conn: AsyncConnection, token_id: str) -> TokenRow | None:
    """The one row a presented token names (its primary key): the request path's lookup."""
    return (await conn.execute(_TOKEN_BY_ID, {"token_id": token_id})).first()


async def token_by_name(conn: AsyncConnection, name: str) -> TokenRow | None:
    return (await conn.execute(_TOKEN_BY_NAME, {"name": name})).first()


async def list_tokens(conn: AsyncConnection) -> list[TokenRow]:
    return list((await conn.execute(select(token).order_by(token.c.name))).all())


async def revoke_token(conn: AsyncConnection, name: str, now: datetime) -> bool:
    """Mark a live token revoked; False if there is no live token of that name."""
    return (await conn.execute(_REVOKE_TOKEN, {"k_name": name, "now": now})).rowcount > 0

"""Schema definitions for SQLAlchemy and Alembic: base, naming convention, engine.

The request path does not go through SQLAlchemy (database.py says why);
migrations and the schema tests do.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Dialect, MetaData, TypeDecorator, event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase

from app.config import Settings
from app.database import ensure_sqlite_directory

# Deterministic constraint names, so that migrations can drop and rename them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware timestamps on both databases, always UTC.

    PostgreSQL keeps the zone (timestamptz); SQLite has no zone, so values are
    stored as UTC and read back as aware UTC datetimes.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware one (UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    """Base of the ORM models."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def create_engine(settings: Settings) -> AsyncEngine:
    """An engine for migrations and schema checks (requests use database.py).

    SQLite gets foreign keys on and the busy timeout, so that two processes
    migrating at start-up wait for each other instead of failing.
    """
    if not settings.is_sqlite:
        return create_async_engine(settings.database_url, echo=settings.echo_sql)
    ensure_sqlite_directory(settings)
    engine = create_async_engine(
        settings.database_url,
        echo=settings.echo_sql,
        connect_args={"timeout": settings.lock_timeout_ms / 1000},
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(settings.lock_timeout_ms)}")
        cursor.close()

    return engine

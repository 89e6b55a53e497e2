"""SQLite: one timestamp format.

The request path used to store SQLite timestamps as ISO 8601 text with a
``T`` and a zone (``2026-11-28T01:52:40.561302+00:00``), while SQLAlchemy's
column type stores ``2026-11-28 01:52:40.561302``. Both were UTC. This
rewrites the first form into the second, so that every row reads back and
compares (as text) the same. PostgreSQL stores timestamptz: nothing to do.

Revision ID: 5c0b8e1d2f47
Revises: a1f5336b4df4
Create Date: 2026-12-01 16:30:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "5c0b8e1d2f47"
down_revision: str | None = "a1f5336b4df4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = {
    "job": ("created_at", "updated_at"),
    "trial": ("start_timestamp", "end_timestamp"),
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table, columns in COLUMNS.items():
        for column in columns:
            # 'YYYY-MM-DDTHH:MM:SS.ffffff+00:00' -> 'YYYY-MM-DD HH:MM:SS.ffffff'
            op.execute(
                f"UPDATE {table} SET {column} = replace(substr({column}, 1, 26), 'T', ' ')"
                f" WHERE {column} LIKE '____-__-__T%+00:00'"
            )


def downgrade() -> None:
    # Both forms are the same instants; the old code read either.
    pass

"""``job.policy`` keeps its default, so that the previous release can still create jobs.

Migration 9e4f1b7c3a21 added ``job.policy`` NOT NULL and, on PostgreSQL,
dropped the column's default once existing rows were filled. The release
before it inserts jobs without the column, so while a rolling upgrade ran
both, every registration on an old pod failed (a NOT NULL violation, 500).
The expand rule (docs/upgrades.md): a new NOT NULL column keeps a default
that the previous release's writes satisfy. SQLite kept it already.

Revision ID: 3b7e2d91c4a8
Revises: 9e4f1b7c3a21
Create Date: 2026-12-06 23:50:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "3b7e2d91c4a8"
down_revision: str | None = "9e4f1b7c3a21"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return  # ADD COLUMN ... DEFAULT 'zeus' NOT NULL kept it
    op.alter_column("job", "policy", existing_type=sa.String(length=16), server_default="zeus")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    op.alter_column("job", "policy", existing_type=sa.String(length=16), server_default=None)

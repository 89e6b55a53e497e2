"""Dispatch idempotency keys: the key a trial's dispatch was sent with.

``trial.idempotency_key`` (null: none, as every trial before) and a unique
index on ``(job_id, idempotency_key)``, by which a retried dispatch finds the
trial it made. Expand only: the release before it inserts trials without the
column (null), which the index never counts as a duplicate.

Revision ID: c4e7a2d95b18
Revises: 4b2d8f6a1c93
Create Date: 2026-12-07 17:00:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c4e7a2d95b18"
down_revision: str | None = "4b2d8f6a1c93"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_trial_job_id_idempotency_key"


def upgrade() -> None:
    op.add_column("trial", sa.Column("idempotency_key", sa.String(length=255), nullable=True))
    op.create_index(INDEX, "trial", ["job_id", "idempotency_key"], unique=True)


def downgrade() -> None:
    op.drop_index(INDEX, table_name="trial")
    with op.batch_alter_table("trial") as batch:
        batch.drop_column("idempotency_key")

"""Trial leases: when each trial was last renewed, and why a Failed one failed.

``lease_renewed_at`` is a trial's dispatch or a later report (app/bandit/lease.py);
existing trials start from their dispatch, so trials left Dispatched by dead
clients expire on the first sweep after the upgrade. ``failure_reason`` is null
for trials that failed before it was kept. The index serves the lease sweep.

Revision ID: 7d3a9c2e4b10
Revises: 5c0b8e1d2f47
Create Date: 2026-12-01 17:00:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7d3a9c2e4b10"
down_revision: str | None = "5c0b8e1d2f47"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("trial", sa.Column("lease_renewed_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("trial", sa.Column("failure_reason", sa.String(length=16), nullable=True))
    op.execute("UPDATE trial SET lease_renewed_at = start_timestamp")
    with op.batch_alter_table("trial") as batch:
        batch.alter_column(
            "lease_renewed_at", existing_type=sa.DateTime(timezone=True), nullable=False
        )
        batch.create_check_constraint(
            op.f("ck_trial_failure_reason"),
            "failure_reason IS NULL OR (status = 'Failed'"
            " AND failure_reason IN ('Ended', 'LeaseExpired'))",
        )
    op.create_index(
        "ix_trial_status_lease_renewed_at",
        "trial",
        ["status", "lease_renewed_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_trial_status_lease_renewed_at", table_name="trial")
    with op.batch_alter_table("trial") as batch:
        batch.drop_constraint(op.f("ck_trial_failure_reason"), type_="check")
        batch.drop_column("failure_reason")
        batch.drop_column("lease_renewed_at")

"""Job groups: the group table, its shared statistics per batch size, and the job's group.

``job.group`` names the job's group (null: none); ``job.start_batch_size`` is
where a group's job starts its pruning walk, fixed by its first dispatch;
``batch_size.predicted_cost`` is the predicted cost a group's job recorded
for a batch size. Existing jobs belong to no group, so nothing they decide
changes.

Revision ID: 4b2d8f6a1c93
Revises: 3b7e2d91c4a8
Create Date: 2026-12-07 12:00:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.store.tables import UTCDateTime

revision: str = "4b2d8f6a1c93"
down_revision: str | None = "3b7e2d91c4a8"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GROUP_CHECK = 'length("group") > 0'


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def upgrade() -> None:
    op.create_table(
        "job_group",
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("target_metric", sa.Float(), nullable=False),
        sa.Column("higher_is_better_metric", sa.Boolean(), nullable=False),
        sa.Column("max_epochs", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint("length(name) > 0", name=op.f("ck_job_group_name_not_empty")),
        sa.CheckConstraint("max_epochs > 0", name=op.f("ck_job_group_max_epochs")),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_job_group")),
    )
    op.create_table(
        "group_batch_size",
        sa.Column("group_name", sa.String(length=256), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("runs", sa.Integer(), nullable=False),
        sa.Column("exhausted", sa.Integer(), nullable=False),
        sa.Column("converged", sa.Integer(), nullable=False),
        sa.Column("min_epochs", sa.Integer(), nullable=True),
        sa.Column("total_epochs", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("batch_size > 0", name=op.f("ck_group_batch_size_batch_size")),
        sa.CheckConstraint(
            "runs >= 0 AND exhausted >= 0 AND converged >= 0 AND exhausted + converged <= runs",
            name=op.f("ck_group_batch_size_counts"),
        ),
        sa.CheckConstraint(
            "min_epochs IS NULL OR min_epochs >= 1", name=op.f("ck_group_batch_size_min_epochs")
        ),
        sa.CheckConstraint("total_epochs >= 0", name=op.f("ck_group_batch_size_total_epochs")),
        sa.ForeignKeyConstraint(
            ["group_name"],
            ["job_group.name"],
            name=op.f("fk_group_batch_size_group_name_job_group"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("group_name", "batch_size", name=op.f("pk_group_batch_size")),
    )
    # SQLite: job and batch_size are parents of ON DELETE CASCADE foreign keys,
    # so a copy-and-move batch would delete their trials and arms (see the
    # policy migration). ADD COLUMN with a column CHECK needs no copy.
    if _sqlite():
        op.execute(
            'ALTER TABLE job ADD COLUMN "group" VARCHAR(256)'
            f" CONSTRAINT ck_job_group_not_empty CHECK ({GROUP_CHECK})"
        )
    else:
        op.add_column("job", sa.Column("group", sa.String(length=256), nullable=True))
        op.create_check_constraint(op.f("ck_job_group_not_empty"), "job", GROUP_CHECK)
    op.add_column("job", sa.Column("start_batch_size", sa.Integer(), nullable=True))
    op.add_column("batch_size", sa.Column("predicted_cost", sa.Float(), nullable=True))
    op.create_index(op.f("ix_job_group"), "job", ["group", "job_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_job_group"), table_name="job")
    if _sqlite():
        # DROP COLUMN in place (SQLite 3.35+): the column's own CHECK goes with it.
        op.execute("ALTER TABLE batch_size DROP COLUMN predicted_cost")
        op.execute("ALTER TABLE job DROP COLUMN start_batch_size")
        op.execute('ALTER TABLE job DROP COLUMN "group"')
    else:
        op.drop_column("batch_size", "predicted_cost")
        op.drop_column("job", "start_batch_size")
        op.drop_constraint(op.f("ck_job_group_not_empty"), "job", type_="check")
        op.drop_column("job", "group")
    op.drop_table("group_batch_size")
    op.drop_table("job_group")

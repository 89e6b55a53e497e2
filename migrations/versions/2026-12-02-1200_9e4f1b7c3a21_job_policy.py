"""The job's policy, and what the predictive policy keeps per trial and batch size.

``job.policy`` is resolved when a job is created (BSO_DEFAULT_POLICY for a
registration without one); jobs created before it ran the paper's algorithm,
so existing rows get ``zeus``. Per trial, an exploration's pruning round and
a running trial's previous report (epoch, cumulative cost); per batch size,
the fewest epochs a converged trial needed. Existing trials and batch sizes
start with none of those: the predictive rules then fall back to the
paper's until the next reports and results fill them in.

Revision ID: 9e4f1b7c3a21
Revises: e9311ed50eb9
Create Date: 2026-12-02 12:00:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "9e4f1b7c3a21"
down_revision: str | None = "e9311ed50eb9"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


POLICY_CHECK = "policy IN ('zeus', 'predictive')"
EPOCHS_CHECK = "min_converged_epochs IS NULL OR min_converged_epochs >= 1"


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def upgrade() -> None:
    # SQLite: job and batch_size are parents of ON DELETE CASCADE foreign keys,
    # so a copy-and-move batch (which drops the old table) would delete their
    # trials and arms. ADD COLUMN with a column CHECK needs no copy.
    if _sqlite():
        op.execute(
            "ALTER TABLE job ADD COLUMN policy VARCHAR(16) DEFAULT 'zeus' NOT NULL"
            f" CONSTRAINT ck_job_policy CHECK ({POLICY_CHECK})"
        )
        op.execute(
            "ALTER TABLE batch_size ADD COLUMN min_converged_epochs INTEGER"
            f" CONSTRAINT ck_batch_size_min_converged_epochs CHECK ({EPOCHS_CHECK})"
        )
    else:
        op.add_column(
            "job",
            sa.Column("policy", sa.String(length=16), server_default="zeus", nullable=False),
        )
        op.alter_column("job", "policy", existing_type=sa.String(length=16), server_default=None)
        op.create_check_constraint(op.f("ck_job_policy"), "job", POLICY_CHECK)
        op.add_column("batch_size", sa.Column("min_converged_epochs", sa.Integer(), nullable=True))
        op.create_check_constraint(
            op.f("ck_batch_size_min_converged_epochs"), "batch_size", EPOCHS_CHECK
        )
    op.add_column("trial", sa.Column("pruning_round", sa.Integer(), nullable=True))
    op.add_column("trial", sa.Column("last_epoch", sa.Integer(), nullable=True))
    op.add_column("trial", sa.Column("last_cost", sa.Float(), nullable=True))
    with op.batch_alter_table("trial") as batch:  # no table refers to trial: a copy is safe
        batch.create_check_constraint(
            op.f("ck_trial_pruning_round"), "pruning_round IS NULL OR pruning_round >= 0"
        )
        batch.create_check_constraint(
            op.f("ck_trial_last_report"),
            "(last_epoch IS NULL AND last_cost IS NULL)"
            " OR (last_epoch >= 1 AND last_cost IS NOT NULL AND last_cost >= 0)",
        )


def downgrade() -> None:
    with op.batch_alter_table("trial") as batch:
        batch.drop_constraint(op.f("ck_trial_last_report"), type_="check")
        batch.drop_constraint(op.f("ck_trial_pruning_round"), type_="check")
        batch.drop_column("last_cost")
        batch.drop_column("last_epoch")
        batch.drop_column("pruning_round")
    if _sqlite():
        # DROP COLUMN in place (SQLite 3.35+): the column's own CHECK goes with it.
        op.execute("ALTER TABLE batch_size DROP COLUMN min_converged_epochs")
        op.execute("ALTER TABLE job DROP COLUMN policy")
        return
    op.drop_constraint(op.f("ck_batch_size_min_converged_epochs"), "batch_size", type_="check")
    op.drop_column("batch_size", "min_converged_epochs")
    op.drop_constraint(op.f("ck_job_policy"), "job", type_="check")
    op.drop_column("job", "policy")

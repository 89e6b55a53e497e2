"""API tokens with roles (BSO_AUTH=required).

One row per token: its name, role (viewer, trainer, admin), a trainer's job
prefixes, and a salted hash of its secret; never the secret itself.
Revoked tokens keep their row, so a name is never reused.

Revision ID: e9311ed50eb9
Revises: 7d3a9c2e4b10
Create Date: 2026-12-01 18:00:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e9311ed50eb9"
down_revision: str | None = "7d3a9c2e4b10"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "token",
        sa.Column("token_id", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("prefixes", sa.JSON(), nullable=False),
        sa.Column("salt", sa.String(length=32), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("role IN ('viewer', 'trainer', 'admin')", name=op.f("ck_token_role")),
        sa.CheckConstraint("length(name) > 0", name=op.f("ck_token_name_not_empty")),
        sa.CheckConstraint(
            "revoked_at IS NULL OR revoked_at >= created_at",
            name=op.f("ck_token_revoked_after_created"),
        ),
        sa.PrimaryKeyConstraint("token_id", name=op.f("pk_token")),
        sa.UniqueConstraint("name", name=op.f("uq_token_name")),
    )


def downgrade() -> None:
    op.drop_table("token")

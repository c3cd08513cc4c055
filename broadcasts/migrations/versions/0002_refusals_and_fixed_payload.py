"""Refusals recorded without an identifier; the payload fixed at a provider message's first attempt.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

from broadcasts.models import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

PROVIDERS = "'ee', 'three', 'o2', 'vodafone'"
SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("broadcast_provider_message") as table:
        table.add_column(sa.Column("payload", sa.JSON(), nullable=True))
    op.create_table(
        "broadcast_event_refusal",
        sa.Column("id", SERIAL, autoincrement=True, nullable=False),
        sa.Column("broadcast_event_id", sa.Uuid(), nullable=False),
        sa.Column("provider", sa.String(255), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(f"provider IN ({PROVIDERS})", name="ck_broadcast_event_refusal_provider"),
        sa.ForeignKeyConstraint(
            ["broadcast_event_id"], ["broadcast_event.id"], name="fk_broadcast_event_refusal_event"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_broadcast_event_refusal"),
    )
    op.create_index(
        "ix_broadcast_event_refusal_event", "broadcast_event_refusal", ["broadcast_event_id", "provider"]
    )


def downgrade() -> None:
    op.drop_index("ix_broadcast_event_refusal_event", table_name="broadcast_event_refusal")
    op.drop_table("broadcast_event_refusal")
    with op.batch_alter_table("broadcast_provider_message") as table:
        table.drop_column("payload")

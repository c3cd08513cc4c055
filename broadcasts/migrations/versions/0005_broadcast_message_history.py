"""`broadcast_message_history`: the broadcast message's status changes made by the dispatcher
(auto-expiry, docs/behaviour.md §2), append-only.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

from broadcasts.models import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

MESSAGE_STATUSES = (
    "'draft', 'pending-approval', 'rejected', 'broadcasting', 'completed', 'cancelled', "
    "'technical-failure'"
)
SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
INDEX = "ix_broadcast_message_history_message"


def upgrade() -> None:
    op.create_table(
        "broadcast_message_history",
        sa.Column("id", SERIAL, autoincrement=True, nullable=False),
        sa.Column("broadcast_message_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(255), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(f"status IN ({MESSAGE_STATUSES})", name="ck_broadcast_message_history_status"),
        sa.ForeignKeyConstraint(
            ["broadcast_message_id"], ["broadcast_message.id"], name="fk_broadcast_message_history_message"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_broadcast_message_history"),
    )
    op.create_index(INDEX, "broadcast_message_history", ["broadcast_message_id"])


def downgrade() -> None:
    op.drop_index(INDEX, table_name="broadcast_message_history")
    op.drop_table("broadcast_message_history")

"""`broadcast_event.created_at`: when the database wrote the row, so events with the same `sent_at`
still have one order (docs/behaviour.md §4 rule 5).

The service's API writes these rows and does not know the column, so the database sets it (a
server default). Rows written before this revision get their `sent_at`: their creation order is
not known, and this keeps the order they had (`sent_at`, then id).

SQLite cannot add a column whose default is an expression, so there the table is rebuilt. A
rename would make the other tables' foreign keys follow the old table, so the rows are copied
aside, the table is dropped and created again under its own name, and the rows go back; foreign
keys are checked at commit, once every row is back.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from broadcasts.models import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Frozen copies of broadcasts.models.database_now for each dialect.
POSTGRESQL_NOW = "(clock_timestamp() AT TIME ZONE 'UTC')"
SQLITE_NOW = "(strftime('%Y-%m-%d %H:%M:%f000', 'now'))"
INDEX = "ix_broadcast_event_broadcast_message_id"
COLUMNS = (
    "id, service_id, broadcast_message_id, sent_at, message_type, transmitted_content, transmitted_areas, "
    "transmitted_sender, transmitted_starts_at, transmitted_finishes_at"
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.add_column("broadcast_event", sa.Column("created_at", UTCDateTime(), nullable=True))
        op.execute("UPDATE broadcast_event SET created_at = sent_at")
        op.alter_column("broadcast_event", "created_at", nullable=False, server_default=sa.text(POSTGRESQL_NOW))
        return
    op.execute("PRAGMA defer_foreign_keys = ON")  # until commit; the rows are back by then
    op.execute("CREATE TEMP TABLE broadcast_event_before_0003 AS SELECT * FROM broadcast_event")
    op.drop_table("broadcast_event")  # its index goes with it
    op.create_table(
        "broadcast_event",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("service_id", sa.Uuid(), nullable=False),
        sa.Column("broadcast_message_id", sa.Uuid(), nullable=False),
        sa.Column("sent_at", UTCDateTime(), nullable=False),
        sa.Column("message_type", sa.String(255), nullable=False),
        sa.Column("transmitted_content", sa.JSON(), nullable=True),
        sa.Column("transmitted_areas", sa.JSON(), nullable=False),
        sa.Column("transmitted_sender", sa.String(255), nullable=True),
        sa.Column("transmitted_starts_at", UTCDateTime(), nullable=True),
        sa.Column("transmitted_finishes_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), server_default=sa.text(SQLITE_NOW), nullable=False),
        sa.CheckConstraint(
            "message_type IN ('alert', 'update', 'cancel')", name="ck_broadcast_event_message_type"
        ),
        sa.ForeignKeyConstraint(
            ["broadcast_message_id"],
            ["broadcast_message.id"],
            name="fk_broadcast_event_broadcast_message_id_broadcast_message",
        ),
        sa.ForeignKeyConstraint(
            ["service_id"], ["services.id"], name="fk_broadcast_event_service_id_services"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_broadcast_event"),
    )
    op.execute(
        f"INSERT INTO broadcast_event ({COLUMNS}, created_at) "
        f"SELECT {COLUMNS}, sent_at FROM temp.broadcast_event_before_0003"
    )
    op.execute("DROP TABLE temp.broadcast_event_before_0003")
    op.create_index(INDEX, "broadcast_event", ["broadcast_message_id"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE broadcast_event DROP COLUMN created_at")  # SQLite 3.35 and later
        return
    op.drop_column("broadcast_event", "created_at")

"""The tables of docs/behaviour.md §2 and the message-number sequence.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

from broadcasts.models import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

CHANNELS = "'test', 'operator', 'severe', 'government'"
PROVIDERS = "'ee', 'three', 'o2', 'vodafone'"
PROVIDER_MESSAGE_STATUSES = "'sending', 'returned-error', 'returned-ack', 'technical-failure'"
MESSAGE_STATUSES = (
    "'draft', 'pending-approval', 'rejected', 'broadcasting', 'completed', 'cancelled', "
    "'technical-failure'"
)
SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "services",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("restricted", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_services"),
    )
    op.create_table(
        "service_broadcast_settings",
        sa.Column("service_id", sa.Uuid(), nullable=False),
        sa.Column("channel", sa.String(255), nullable=False),
        sa.CheckConstraint(f"channel IN ({CHANNELS})", name="ck_service_broadcast_settings_channel"),
        sa.ForeignKeyConstraint(
            ["service_id"], ["services.id"], name="fk_service_broadcast_settings_service_id_services"
        ),
        sa.PrimaryKeyConstraint("service_id", name="pk_service_broadcast_settings"),
    )
    op.create_table(
        "service_broadcast_providers",
        sa.Column("service_id", sa.Uuid(), nullable=False),
        sa.Column("provider", sa.String(255), nullable=False),
        sa.CheckConstraint(
            f"provider IN ({PROVIDERS})", name="ck_service_broadcast_providers_provider"
        ),
        sa.ForeignKeyConstraint(
            ["service_id"], ["services.id"], name="fk_service_broadcast_providers_service_id_services"
        ),
        sa.PrimaryKeyConstraint("service_id", "provider", name="pk_service_broadcast_providers"),
    )
    op.create_table(
        "broadcast_message",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("service_id", sa.Uuid(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("areas", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(255), nullable=False),
        sa.Column("starts_at", UTCDateTime(), nullable=True),
        sa.Column("finishes_at", UTCDateTime(), nullable=True),
        sa.Column("stubbed", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=True),
        sa.CheckConstraint(f"status IN ({MESSAGE_STATUSES})", name="ck_broadcast_message_status"),
        sa.ForeignKeyConstraint(
            ["service_id"], ["services.id"], name="fk_broadcast_message_service_id_services"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_broadcast_message"),
    )
    op.create_index("ix_broadcast_message_service_id", "broadcast_message", ["service_id"])
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
    op.create_index(
        "ix_broadcast_event_broadcast_message_id", "broadcast_event", ["broadcast_message_id"]
    )
    op.create_table(
        "broadcast_provider_message",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("broadcast_event_id", sa.Uuid(), nullable=False),
        sa.Column("provider", sa.String(255), nullable=False),
        sa.Column("status", sa.String(255), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=True),
        sa.CheckConstraint(
            f"provider IN ({PROVIDERS})", name="ck_broadcast_provider_message_provider"
        ),
        sa.CheckConstraint(
            f"status IN ({PROVIDER_MESSAGE_STATUSES})", name="ck_broadcast_provider_message_status"
        ),
        sa.ForeignKeyConstraint(
            ["broadcast_event_id"],
            ["broadcast_event.id"],
            name="fk_broadcast_provider_message_event",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_broadcast_provider_message"),
        sa.UniqueConstraint(
            "broadcast_event_id", "provider", name="uq_broadcast_provider_message_broadcast_event_id"
        ),
    )
    op.create_table(
        "broadcast_provider_message_status",
        sa.Column("id", SERIAL, autoincrement=True, nullable=False),
        sa.Column("broadcast_provider_message_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(255), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("route", sa.String(255), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.CheckConstraint(
            f"status IN ({PROVIDER_MESSAGE_STATUSES})",
            name="ck_broadcast_provider_message_status_status",
        ),
        sa.ForeignKeyConstraint(
            ["broadcast_provider_message_id"],
            ["broadcast_provider_message.id"],
            name="fk_broadcast_provider_message_status_message",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_broadcast_provider_message_status"),
    )
    op.create_index(
        "ix_broadcast_provider_message_status_message",
        "broadcast_provider_message_status",
        ["broadcast_provider_message_id"],
    )
    op.create_table(
        "broadcast_provider_message_number",
        sa.Column("broadcast_provider_message_number", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("broadcast_provider_message_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["broadcast_provider_message_id"],
            ["broadcast_provider_message.id"],
            name="fk_broadcast_provider_message_number_message",
        ),
        sa.PrimaryKeyConstraint(
            "broadcast_provider_message_number", name="pk_broadcast_provider_message_number"
        ),
        sa.UniqueConstraint(
            "broadcast_provider_message_id",
            name="uq_broadcast_provider_message_number_message",
        ),
    )
    op.create_table(
        "link_test_result",
        sa.Column("id", SERIAL, autoincrement=True, nullable=False),
        sa.Column("provider", sa.String(255), nullable=False),
        sa.Column("route", sa.String(255), nullable=False),
        sa.Column("identifier", sa.Uuid(), nullable=False),
        sa.Column("message_number", sa.Integer(), nullable=True),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_link_test_result"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE SEQUENCE broadcast_provider_message_number_seq")
    else:
        # SQLite has no sequences: a one-row counter with PostgreSQL's column name.
        op.create_table(
            "broadcast_provider_message_number_seq",
            sa.Column("last_value", sa.Integer(), nullable=False),
        )
        op.execute("INSERT INTO broadcast_provider_message_number_seq (last_value) VALUES (0)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP SEQUENCE broadcast_provider_message_number_seq")
    else:
        op.drop_table("broadcast_provider_message_number_seq")
    for table in (
        "link_test_result",
        "broadcast_provider_message_number",
        "broadcast_provider_message_status",
        "broadcast_provider_message",
        "broadcast_event",
        "broadcast_message",
        "service_broadcast_providers",
        "service_broadcast_settings",
        "services",
    ):
        op.drop_table(table)

"""The provider-message status `superseded`: a later cancel stopped an alert (or an update) its
network had not acknowledged (docs/behaviour.md §4 rule 6). Both status columns,
`broadcast_provider_message.status` and `broadcast_provider_message_status.status`, allow it.

PostgreSQL replaces the two CHECK constraints. SQLite cannot change a constraint, so there both
tables are rebuilt as in 0003: the rows are copied aside, the tables dropped and created again
under their own names (a rename would make the other tables' foreign keys follow the old table),
and the rows go back with their ids, so the history keeps its order. Foreign keys are checked at
commit, once every row is back.

A downgrade refuses while any provider message or history row is `superseded`: the older schema
has no word for it, and the history is never rewritten.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

from broadcasts.models import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BEFORE = ("sending", "returned-error", "returned-ack", "technical-failure")
AFTER = (*BEFORE, "superseded")
PROVIDERS = "'ee', 'three', 'o2', 'vodafone'"
SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
MESSAGE_CHECK = "ck_broadcast_provider_message_status"
HISTORY_CHECK = "ck_broadcast_provider_message_status_status"
HISTORY_INDEX = "ix_broadcast_provider_message_status_message"
MESSAGE_COLUMNS = "id, broadcast_event_id, provider, status, created_at, updated_at, payload"
HISTORY_COLUMNS = "id, broadcast_provider_message_id, status, created_at, route, attempt, detail"


def upgrade() -> None:
    _allow(AFTER)


def downgrade() -> None:
    found = op.get_bind().execute(sa.text(
        "SELECT (SELECT count(*) FROM broadcast_provider_message WHERE status = 'superseded') "
        "+ (SELECT count(*) FROM broadcast_provider_message_status WHERE status = 'superseded')")).scalar()
    if found:
        raise RuntimeError(f"cannot downgrade below 0006: {found} provider message or history row(s) are "
                           "'superseded', which the older schema does not allow")
    _allow(BEFORE)


def _condition(statuses: tuple[str, ...]) -> str:
    return "status IN ({})".format(", ".join(f"'{status}'" for status in statuses))


def _allow(statuses: tuple[str, ...]) -> None:
    if op.get_bind().dialect.name != "sqlite":
        inspector = sa.inspect(op.get_bind())
        for table, name in (("broadcast_provider_message", MESSAGE_CHECK),
                            ("broadcast_provider_message_status", HISTORY_CHECK)):
            # 0001's names went through the naming convention a second time (and were shortened
            # with a hash), so the constraint is found by what it checks, and created again the
            # same way, under the same name.
            for check in inspector.get_check_constraints(table):
                if "returned-ack" in check["sqltext"]:
                    op.drop_constraint(op.f(check["name"]), table, type_="check")
            op.create_check_constraint(name, table, _condition(statuses))
        return
    op.execute("PRAGMA defer_foreign_keys = ON")  # until commit; the rows are back by then
    op.execute("CREATE TEMP TABLE provider_message_before_0006 AS SELECT * FROM broadcast_provider_message")
    op.execute("CREATE TEMP TABLE provider_message_status_before_0006 AS "
               "SELECT * FROM broadcast_provider_message_status")
    op.drop_table("broadcast_provider_message_status")  # its index goes with it
    op.drop_table("broadcast_provider_message")
    op.create_table(
        "broadcast_provider_message",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("broadcast_event_id", sa.Uuid(), nullable=False),
        sa.Column("provider", sa.String(255), nullable=False),
        sa.Column("status", sa.String(255), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=True),
        sa.CheckConstraint(f"provider IN ({PROVIDERS})", name="ck_broadcast_provider_message_provider"),
        sa.CheckConstraint(_condition(statuses), name=MESSAGE_CHECK),
        sa.ForeignKeyConstraint(["broadcast_event_id"], ["broadcast_event.id"],
                                name="fk_broadcast_provider_message_event"),
        sa.PrimaryKeyConstraint("id", name="pk_broadcast_provider_message"),
        sa.UniqueConstraint("broadcast_event_id", "provider", name="uq_broadcast_provider_message_broadcast_event_id"),
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
        sa.CheckConstraint(_condition(statuses), name=HISTORY_CHECK),
        sa.ForeignKeyConstraint(["broadcast_provider_message_id"], ["broadcast_provider_message.id"],
                                name="fk_broadcast_provider_message_status_message"),
        sa.PrimaryKeyConstraint("id", name="pk_broadcast_provider_message_status"),
    )
    op.execute(f"INSERT INTO broadcast_provider_message ({MESSAGE_COLUMNS}) "
               f"SELECT {MESSAGE_COLUMNS} FROM temp.provider_message_before_0006")
    op.execute(f"INSERT INTO broadcast_provider_message_status ({HISTORY_COLUMNS}) "
               f"SELECT {HISTORY_COLUMNS} FROM temp.provider_message_status_before_0006")
    op.execute("DROP TABLE temp.provider_message_before_0006")
    op.execute("DROP TABLE temp.provider_message_status_before_0006")
    op.create_index(HISTORY_INDEX, "broadcast_provider_message_status", ["broadcast_provider_message_id"])

"""The tables of docs/behaviour.md §2, as SQLAlchemy 2 typed models. Names are the contract with the service API.

Times are stored as naive UTC (`timestamp without time zone`, as the service API writes them) and
handed to Python as aware UTC datetimes, on PostgreSQL and SQLite alike.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    false,
    true,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.sql.functions import FunctionElement

from broadcasts.providers import CHANNELS, PROVIDERS

MESSAGE_TYPES = ("alert", "update", "cancel")
MESSAGE_STATUSES = (
    "draft",
    "pending-approval",
    "rejected",
    "broadcasting",
    "completed",
    "cancelled",
    "technical-failure",
)
SENDING, RETURNED_ERROR, RETURNED_ACK, TECHNICAL_FAILURE, SUPERSEDED = (
    "sending",
    "returned-error",
    "returned-ack",
    "technical-failure",
    "superseded",  # a later cancel stopped it before it reached the network: final, not a failure
)
PROVIDER_MESSAGE_STATUSES = (SENDING, RETURNED_ERROR, RETURNED_ACK, TECHNICAL_FAILURE, SUPERSEDED)
# A send still under way: what resume starts again and what a later cancel supersedes.
UNFINISHED_STATUSES = (SENDING, RETURNED_ERROR)
BROADCASTING, COMPLETED = "broadcasting", "completed"
NUMBER_SEQUENCE = "broadcast_provider_message_number_seq"


def utcnow() -> datetime:
    return datetime.now(UTC)


def one_of(column: str, values: tuple[str, ...]) -> CheckConstraint:
    allowed = ", ".join(f"'{v}'" for v in values)
    return CheckConstraint(f"{column} IN ({allowed})", name=column)


class UTCDateTime(TypeDecorator[datetime]):
    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: give times in UTC with tzinfo")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class database_now(FunctionElement[datetime]):
    """The database's clock when the row is written, as naive UTC to the microsecond on
    PostgreSQL (its `now()` is the transaction's start, the same for every row it writes) and to
    the millisecond on SQLite. A server default, so writers need not set it."""

    type = UTCDateTime()
    inherit_cache = True


@compiles(database_now, "postgresql")
def _database_now_postgresql(_element: database_now, _compiler: Any, **_kw: Any) -> str:
    return "(clock_timestamp() AT TIME ZONE 'UTC')"


@compiles(database_now, "sqlite")
def _database_now_sqlite(_element: database_now, _compiler: Any, **_kw: Any) -> str:
    # Six fraction digits, as SQLAlchemy writes datetimes: it reads "…:05.123" as 123 µs.
    return "(strftime('%Y-%m-%d %H:%M:%f000', 'now'))"


# BIGINT on PostgreSQL; SQLite only auto-increments a column declared INTEGER PRIMARY KEY.
Serial = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_name)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}


class Service(Base):
    __tablename__ = "services"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    restricted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    # Which networks it may use and on which channel: read with each event (`dao.get_event`), in
    # the event's statement, and written only by the service API.
    broadcast_providers: Mapped[list[ServiceBroadcastProvider]] = relationship(viewonly=True)
    broadcast_settings: Mapped[ServiceBroadcastSettings | None] = relationship(viewonly=True)


class ServiceBroadcastSettings(Base):
    __tablename__ = "service_broadcast_settings"
    __table_args__ = (one_of("channel", CHANNELS),)

    service_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("services.id"), primary_key=True)
    channel: Mapped[str] = mapped_column(String(255))


class ServiceBroadcastProvider(Base):
    __tablename__ = "service_broadcast_providers"
    __table_args__ = (one_of("provider", tuple(PROVIDERS)),)

    service_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("services.id"), primary_key=True)
    provider: Mapped[str] = mapped_column(String(255), primary_key=True)


class BroadcastMessage(Base):
    __tablename__ = "broadcast_message"
    __table_args__ = (one_of("status", MESSAGE_STATUSES),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    service_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("services.id"), index=True)
    content: Mapped[str] = mapped_column(Text)
    areas: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(255))
    starts_at: Mapped[datetime | None]
    finishes_at: Mapped[datetime | None]
    stubbed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(onupdate=utcnow)

    service: Mapped[Service] = relationship()


class BroadcastMessageHistory(Base):
    """Append-only: each change the dispatcher makes to a broadcast message's status, and why. The
    service's API keeps its own record of the changes it makes."""

    __tablename__ = "broadcast_message_history"
    __table_args__ = (
        one_of("status", MESSAGE_STATUSES),
        Index("ix_broadcast_message_history_message", "broadcast_message_id"),
    )

    id: Mapped[int] = mapped_column(Serial, primary_key=True, autoincrement=True)
    broadcast_message_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("broadcast_message.id", name="fk_broadcast_message_history_message")
    )
    status: Mapped[str] = mapped_column(String(255))  # the status the message took
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BroadcastEvent(Base):
    __tablename__ = "broadcast_event"
    __table_args__ = (one_of("message_type", MESSAGE_TYPES),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    service_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("services.id"))
    broadcast_message_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("broadcast_message.id"), index=True
    )
    sent_at: Mapped[datetime] = mapped_column(default=utcnow)
    message_type: Mapped[str] = mapped_column(String(255))
    transmitted_content: Mapped[dict[str, Any] | None]
    transmitted_areas: Mapped[dict[str, Any]]
    transmitted_sender: Mapped[str | None] = mapped_column(String(255))
    transmitted_starts_at: Mapped[datetime | None]
    transmitted_finishes_at: Mapped[datetime | None]
    # Creation order: with `sent_at` before it and `id` after it, the order of a broadcast's
    # events (`order_key`). Set by the database; the service's API does not write it.
    created_at: Mapped[datetime] = mapped_column(server_default=database_now())

    service: Mapped[Service] = relationship()
    broadcast_message: Mapped[BroadcastMessage] = relationship()

    __mapper_args__ = {"eager_defaults": True}  # read `created_at` back at insert

    @property
    def order_key(self) -> tuple[datetime, datetime, uuid.UUID]:
        """Where the event stands among its broadcast's events (docs/behaviour.md §4 rule 5):
        by `sent_at`, then creation, then id, so two events written in the same second still
        have one order, the same in SQL (`dao.EVENT_ORDER` sorts by these columns) and here
        (`dao.earlier_events_and_later_cancels` splits by it)."""
        return (self.sent_at, self.created_at, self.id)

    @property
    def finishes_at(self) -> datetime | None:
        """When the event stops being sendable: its own finish time, else its message's (another
        writer may leave a cancel's empty). None only for a row that cannot be sent."""
        if self.transmitted_finishes_at is not None:
            return self.transmitted_finishes_at
        return self.broadcast_message.finishes_at if self.broadcast_message is not None else None


class BroadcastProviderMessage(Base):
    __tablename__ = "broadcast_provider_message"
    __table_args__ = (
        UniqueConstraint("broadcast_event_id", "provider"),
        one_of("status", PROVIDER_MESSAGE_STATUSES),
        one_of("provider", tuple(PROVIDERS)),
    )

    # The identifier the mobile network sees: created once, reused on every retry and replay.
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    broadcast_event_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("broadcast_event.id", name="fk_broadcast_provider_message_event")
    )
    provider: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(onupdate=utcnow)
    # What the network receives for this identifier, fixed at the first attempt and reused on
    # every retry and replay (a channel changed meanwhile must not change the message).
    payload: Mapped[dict[str, Any] | None]

    number: Mapped[BroadcastProviderMessageNumber | None] = relationship(lazy="joined")

    @property
    def message_number(self) -> int | None:
        """The Vodafone message number, or None for providers that send none."""
        return self.number.broadcast_provider_message_number if self.number else None


class BroadcastProviderMessageStatus(Base):
    """Append-only: the data-access layer only ever inserts here."""

    __tablename__ = "broadcast_provider_message_status"
    __table_args__ = (
        one_of("status", PROVIDER_MESSAGE_STATUSES),
        Index("ix_broadcast_provider_message_status_message", "broadcast_provider_message_id"),
    )

    id: Mapped[int] = mapped_column(Serial, primary_key=True, autoincrement=True)
    broadcast_provider_message_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("broadcast_provider_message.id", name="fk_broadcast_provider_message_status_message")
    )
    status: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    route: Mapped[str | None] = mapped_column(String(255))
    attempt: Mapped[int | None] = mapped_column(Integer)  # 1-based count of proxy attempts
    detail: Mapped[dict[str, Any] | None]


class BroadcastProviderMessageNumber(Base):
    """Vodafone message numbers; the number comes from `broadcast_provider_message_number_seq`."""

    __tablename__ = "broadcast_provider_message_number"
    __table_args__ = (
        UniqueConstraint("broadcast_provider_message_id", name="uq_broadcast_provider_message_number_message"),
    )

    broadcast_provider_message_number: Mapped[int] = mapped_column(
        Integer, primary_key=True, autoincrement=False
    )
    broadcast_provider_message_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("broadcast_provider_message.id", name="fk_broadcast_provider_message_number_message")
    )


class BroadcastEventRefusal(Base):
    """Append-only: why an (event, provider) was refused (stubbed, service not live, provider not
    available, broadcast cancelled). A refusal allocates no identifier, so it has its own table."""

    __tablename__ = "broadcast_event_refusal"
    __table_args__ = (
        one_of("provider", tuple(PROVIDERS)),
        Index("ix_broadcast_event_refusal_event", "broadcast_event_id", "provider"),
    )

    id: Mapped[int] = mapped_column(Serial, primary_key=True, autoincrement=True)
    broadcast_event_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("broadcast_event.id", name="fk_broadcast_event_refusal_event")
    )
    provider: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LinkTestResult(Base):
    __tablename__ = "link_test_result"

    id: Mapped[int] = mapped_column(Serial, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(String(255))
    route: Mapped[str] = mapped_column(String(255))
    identifier: Mapped[uuid.UUID] = mapped_column(Uuid)
    message_number: Mapped[int | None] = mapped_column(Integer)
    ok: Mapped[bool] = mapped_column(Boolean)
    detail: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RouteAdvice(Base):
    """The route advisor: per network, the last route that worked (a send or a link test), which a
    send tries first while it is fresh (docs/behaviour.md §3). One row per network, overwritten."""

    __tablename__ = "route_advisor"
    __table_args__ = (one_of("provider", tuple(PROVIDERS)),)

    provider: Mapped[str] = mapped_column(String(255), primary_key=True)
    lambda_name: Mapped[str] = mapped_column(String(255))  # the proxy function-name suffix, "ee-1-proxy"
    target: Mapped[str] = mapped_column(String(255))  # "cbc_a" or "cbc_b"
    updated_at: Mapped[datetime]

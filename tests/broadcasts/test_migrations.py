"""The schema built by `upgrade head` is the models' schema, on SQLite and on PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, func, insert, inspect, select, update
from sqlalchemy.exc import IntegrityError

from broadcasts.db import get_engine, unit_of_work
from broadcasts.migrate import downgrade, upgrade
from broadcasts.models import (
    PROVIDER_MESSAGE_STATUSES,
    Base,
    BroadcastEvent,
    BroadcastMessage,
    BroadcastMessageHistory,
    BroadcastProviderMessage,
    BroadcastProviderMessageNumber,
    BroadcastProviderMessageStatus,
    Service,
    utcnow,
)
from tests.conftest import backend
from tests.support.postgres import throwaway_postgres_database
from tests.factories import SQUARE, make_alert

CONTRACT_TABLES = {
    "services",
    "service_broadcast_settings",
    "service_broadcast_providers",
    "broadcast_message",
    "broadcast_event",
    "broadcast_provider_message",
    "broadcast_provider_message_status",
    "broadcast_provider_message_number",
    "link_test_result",
}


def test_upgrade_head_builds_exactly_the_models_schema(engine):
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = [
            d for d in compare_metadata(context, Base.metadata)
            # SQLite's stand-in for the PostgreSQL sequence is not a model.
            if not (d[0] == "remove_table" and d[1].name == "broadcast_provider_message_number_seq")
        ]
    assert differences == []


def test_every_spec_table_exists_with_the_spec_columns(engine):
    inspector = inspect(engine)
    assert CONTRACT_TABLES <= set(inspector.get_table_names())
    columns = {c["name"] for c in inspector.get_columns("broadcast_provider_message_status")}
    assert {"id", "broadcast_provider_message_id", "status", "created_at", "route", "attempt", "detail"} <= columns
    columns = {c["name"] for c in inspector.get_columns("broadcast_event")}
    assert {
        "id", "service_id", "broadcast_message_id", "sent_at", "message_type", "transmitted_content",
        "transmitted_areas", "transmitted_sender", "transmitted_starts_at", "transmitted_finishes_at",
    } <= columns


def test_the_message_number_sequence_exists(engine):
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            found = connection.exec_driver_sql(
                "SELECT 1 FROM pg_class WHERE relkind = 'S' AND relname = 'broadcast_provider_message_number_seq'"
            ).scalar()
        else:
            found = connection.exec_driver_sql(
                "SELECT 1 FROM sqlite_master WHERE name = 'broadcast_provider_message_number_seq'"
            ).scalar()
    assert found == 1


def test_a_second_provider_message_for_the_same_event_and_provider_is_rejected(engine):
    _, _, event_id = make_alert(engine)
    with unit_of_work(engine) as session:
        session.add(BroadcastProviderMessage(broadcast_event_id=event_id, provider="ee", status="sending"))
    with pytest.raises(IntegrityError), unit_of_work(engine) as session:
        session.add(BroadcastProviderMessage(broadcast_event_id=event_id, provider="ee", status="sending"))


def test_a_provider_message_status_outside_the_spec_is_rejected(engine):
    _, _, event_id = make_alert(engine)
    with pytest.raises(IntegrityError), unit_of_work(engine) as session:
        session.add(BroadcastProviderMessage(broadcast_event_id=event_id, provider="ee", status="delivered"))


def test_one_message_number_belongs_to_one_provider_message(engine):
    _, _, event_id = make_alert(engine)
    with unit_of_work(engine) as session:
        message = BroadcastProviderMessage(id=uuid.uuid4(), broadcast_event_id=event_id, provider="vodafone", status="sending")
        session.add(message)
        session.flush()
        session.add(BroadcastProviderMessageNumber(broadcast_provider_message_number=10**9, broadcast_provider_message_id=message.id))
    with pytest.raises(IntegrityError), unit_of_work(engine) as session:
        session.add(BroadcastProviderMessageNumber(broadcast_provider_message_number=10**9 + 1, broadcast_provider_message_id=message.id))


@pytest.fixture
def empty_engine(tmp_path: Path) -> Iterator[Engine]:
    """A database of its own, with no schema yet."""
    if backend() == "sqlite":
        engine = get_engine(f"sqlite:///{tmp_path / 'before.db'}")
        yield engine
        engine.dispose()
        return
    with throwaway_postgres_database("broadcasts_migration") as url:
        engine = get_engine(url)
        yield engine
        engine.dispose()


def test_upgrading_a_database_with_events_keeps_them_their_order_and_what_refers_to_them(empty_engine):
    upgrade(empty_engine, "0002")  # before events had a creation time
    sent_at, ids = utcnow(), sorted(uuid.uuid4() for _ in range(2))
    message_id, service_id, provider_message_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with unit_of_work(empty_engine) as session:
        session.execute(insert(Service.__table__).values(id=service_id, name="s", active=True, restricted=False))
        session.execute(insert(BroadcastMessage.__table__).values(
            id=message_id, service_id=service_id, content="c", areas={"simple_polygons": [SQUARE]},
            status="broadcasting", stubbed=False, created_at=sent_at))
        for event_id in ids:
            session.execute(insert(BroadcastEvent.__table__).values(
                id=event_id, service_id=service_id, broadcast_message_id=message_id, sent_at=sent_at,
                message_type="alert", transmitted_content={"body": "b"}, transmitted_areas={"simple_polygons": []}))
        session.execute(insert(BroadcastProviderMessage.__table__).values(
            id=provider_message_id, broadcast_event_id=ids[0], provider="ee", status="sending", created_at=sent_at))
        session.execute(insert(BroadcastProviderMessageStatus.__table__).values(
            broadcast_provider_message_id=provider_message_id, status="sending", created_at=sent_at))

    upgrade(empty_engine)

    with unit_of_work(empty_engine) as session:
        events = [session.get_one(BroadcastEvent, event_id) for event_id in ids]
        assert [e.created_at for e in events] == [sent_at, sent_at]  # unknown: the order stays by id
        assert session.get_one(BroadcastProviderMessage, provider_message_id).broadcast_event_id == ids[0]
        later = insert(BroadcastEvent.__table__).values(
            id=uuid.uuid4(), service_id=service_id, broadcast_message_id=message_id, sent_at=sent_at,
            message_type="update", transmitted_areas={"simple_polygons": []})
        created = session.get_one(BroadcastEvent, session.execute(later.returning(BroadcastEvent.id)).scalar_one())
        assert timedelta(0) <= created.created_at - sent_at < timedelta(minutes=1)
    with pytest.raises(IntegrityError), unit_of_work(empty_engine) as session:  # foreign keys still hold
        session.add(BroadcastProviderMessage(broadcast_event_id=uuid.uuid4(), provider="ee", status="sending"))


def test_upgrading_adds_an_empty_message_history_and_downgrading_takes_only_it_away(empty_engine):
    upgrade(empty_engine, "0003")  # before the dispatcher recorded message status changes
    message_id, service_id = uuid.uuid4(), uuid.uuid4()
    with unit_of_work(empty_engine) as session:
        session.execute(insert(Service.__table__).values(id=service_id, name="s", active=True, restricted=False))
        session.execute(insert(BroadcastMessage.__table__).values(
            id=message_id, service_id=service_id, content="c", areas={"simple_polygons": [SQUARE]},
            status="broadcasting", stubbed=False, created_at=utcnow()))

    upgrade(empty_engine)

    columns = {c["name"] for c in inspect(empty_engine).get_columns("broadcast_message_history")}
    assert columns == {"id", "broadcast_message_id", "status", "reason", "created_at"}
    with unit_of_work(empty_engine) as session:
        assert session.scalar(select(func.count()).select_from(BroadcastMessageHistory)) == 0
        assert session.get_one(BroadcastMessage, message_id).status == "broadcasting"
        session.add(BroadcastMessageHistory(broadcast_message_id=message_id, status="completed", reason="r",
                                            created_at=utcnow()))
    with pytest.raises(IntegrityError), unit_of_work(empty_engine) as session:  # a status of the contract only
        session.add(BroadcastMessageHistory(broadcast_message_id=message_id, status="expired", reason="r",
                                            created_at=utcnow()))

    downgrade(empty_engine, "0003")
    assert "broadcast_message_history" not in inspect(empty_engine).get_table_names()
    with unit_of_work(empty_engine) as session:
        assert session.get_one(BroadcastMessage, message_id).status == "broadcasting"


def _provider_message_rows(engine: Engine, event_id: uuid.UUID, status: str) -> None:
    """A provider message and one history row in `status`, as the dispatcher writes them."""
    message_id = uuid.uuid4()
    with unit_of_work(engine) as session:
        session.execute(insert(BroadcastProviderMessage.__table__).values(
            id=message_id, broadcast_event_id=event_id, provider="o2", status=status, created_at=utcnow()))
        session.execute(insert(BroadcastProviderMessageStatus.__table__).values(
            broadcast_provider_message_id=message_id, status=status, created_at=utcnow()))


@pytest.mark.parametrize("status", PROVIDER_MESSAGE_STATUSES)
def test_both_status_columns_take_every_provider_message_status(engine, status):
    _, _, event_id = make_alert(engine)
    _provider_message_rows(engine, event_id, status)
    with unit_of_work(engine) as session:
        message = session.scalars(select(BroadcastProviderMessage)
                                  .where(BroadcastProviderMessage.broadcast_event_id == event_id)).one()
        history = session.scalars(select(BroadcastProviderMessageStatus.status).where(
            BroadcastProviderMessageStatus.broadcast_provider_message_id == message.id)).all()
    assert (message.status, history) == (status, [status])


def test_a_history_status_outside_the_spec_is_rejected(engine):
    _, _, event_id = make_alert(engine)
    _provider_message_rows(engine, event_id, "sending")
    with unit_of_work(engine) as session:
        message_id = session.scalar(select(BroadcastProviderMessage.id)
                                    .where(BroadcastProviderMessage.broadcast_event_id == event_id))
    with pytest.raises(IntegrityError), unit_of_work(engine) as session:
        session.execute(insert(BroadcastProviderMessageStatus.__table__).values(
            broadcast_provider_message_id=message_id, status="delivered", created_at=utcnow()))


def test_upgrading_to_superseded_keeps_messages_their_history_and_what_refers_to_them(empty_engine):
    upgrade(empty_engine, "0003")  # before `superseded`
    service_id, message_id = uuid.uuid4(), uuid.uuid4()
    event_id, provider_message_id, sent_at = uuid.uuid4(), uuid.uuid4(), utcnow()
    with unit_of_work(empty_engine) as session:
        session.execute(insert(Service.__table__).values(id=service_id, name="s", active=True, restricted=False))
        session.execute(insert(BroadcastMessage.__table__).values(
            id=message_id, service_id=service_id, content="c", areas={"simple_polygons": [SQUARE]},
            status="broadcasting", stubbed=False, created_at=sent_at))
        session.execute(insert(BroadcastEvent.__table__).values(
            id=event_id, service_id=service_id, broadcast_message_id=message_id, sent_at=sent_at,
            message_type="alert", transmitted_content={"body": "b"}, transmitted_areas={"simple_polygons": []}))
        session.execute(insert(BroadcastProviderMessage.__table__).values(
            id=provider_message_id, broadcast_event_id=event_id, provider="vodafone", status="returned-error",
            created_at=sent_at, payload={"identifier": str(provider_message_id)}))
        session.add(BroadcastProviderMessageNumber(broadcast_provider_message_number=77,
                                                   broadcast_provider_message_id=provider_message_id))
        for status, attempt in (("sending", None), ("returned-error", 1)):
            session.execute(insert(BroadcastProviderMessageStatus.__table__).values(
                broadcast_provider_message_id=provider_message_id, status=status, attempt=attempt,
                detail={"error": "boom"} if attempt else None, created_at=sent_at))
    with pytest.raises(IntegrityError), unit_of_work(empty_engine) as session:  # not yet allowed
        session.execute(update(BroadcastProviderMessage.__table__).values(status="superseded"))

    upgrade(empty_engine)

    with unit_of_work(empty_engine) as session:
        message = session.get_one(BroadcastProviderMessage, provider_message_id)
        assert (message.status, message.payload, message.message_number) == (
            "returned-error", {"identifier": str(provider_message_id)}, 77)
        history = list(session.scalars(select(BroadcastProviderMessageStatus)
                                       .order_by(BroadcastProviderMessageStatus.id)))
        assert [(h.status, h.attempt, h.detail) for h in history] == [
            ("sending", None, None), ("returned-error", 1, {"error": "boom"})]
        session.execute(update(BroadcastProviderMessage.__table__).values(status="superseded"))
        row = BroadcastProviderMessageStatus(broadcast_provider_message_id=provider_message_id,
                                             status="superseded", created_at=utcnow())
        session.add(row)
        session.flush()
        assert row.id > history[-1].id  # the history keeps its order after the rebuild
    with pytest.raises(IntegrityError), unit_of_work(empty_engine) as session:  # foreign keys still hold
        session.add(BroadcastProviderMessageStatus(broadcast_provider_message_id=uuid.uuid4(), status="sending",
                                                   created_at=utcnow()))
    with pytest.raises(IntegrityError), unit_of_work(empty_engine) as session:
        session.add(BroadcastProviderMessage(broadcast_event_id=uuid.uuid4(), provider="ee", status="sending"))
    with pytest.raises(RuntimeError, match="'superseded'"):
        downgrade(empty_engine, "0003")

"""Auto-expiry on the real test database (SQLite and PostgreSQL): a broadcasting message past its
`finishes_at` is completed once, with one history row, however many copies run at once; nothing
else is touched. The database is shared with other tests, so each test looks only at the messages
it wrote."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine, update
from sqlalchemy.orm import Session

from broadcasts import dao
from broadcasts.db import get_engine, unit_of_work
from broadcasts.expiry import Expired, expire_finished_broadcasts
from broadcasts.models import MESSAGE_STATUSES, BroadcastMessage, utcnow
from broadcasts.providers import get_provider
from broadcasts.settings import Settings, describe_invalid_settings
from tests.conftest import backend
from tests.factories import make_event, make_message, make_service


def a_message(engine: Engine, finishes_at: datetime | None, status: str = "broadcasting") -> uuid.UUID:
    message_id = make_message(engine, make_service(engine))
    with unit_of_work(engine) as session:
        session.execute(update(BroadcastMessage).where(BroadcastMessage.id == message_id)
                        .values(finishes_at=finishes_at, status=status, updated_at=None))
    return message_id


def read(engine: Engine, message_id: uuid.UUID) -> tuple[BroadcastMessage, list[tuple[str, str, datetime]]]:
    with unit_of_work(engine) as session:
        message = session.get_one(BroadcastMessage, message_id)
        history = [(h.status, h.reason, h.created_at) for h in dao.message_history(session, message_id)]
        return message, history


def mine(expired: list[Expired], ids: list[uuid.UUID]) -> list[uuid.UUID]:
    return [e.broadcast_message_id for e in expired if e.broadcast_message_id in ids]


def test_a_broadcasting_message_past_its_finish_time_is_completed_with_one_history_row(engine):
    now = utcnow()
    finished = now - timedelta(seconds=1)
    message_id = a_message(engine, finished)

    expired = [e for e in expire_finished_broadcasts(engine, now) if e.broadcast_message_id == message_id]

    message, history = read(engine, message_id)
    assert message.status == "completed" and message.updated_at == now
    reason = f"expired: finishes_at {finished.isoformat(timespec='milliseconds')} passed"
    assert history == [("completed", reason, now)]
    assert [(e.finishes_at, e.completed_at, e.service_id, e.reason) for e in expired] == [
        (finished, now, message.service_id, reason)]


def test_running_again_completes_nothing_more(engine):
    now = utcnow()
    message_id = a_message(engine, now - timedelta(minutes=5))
    assert mine(expire_finished_broadcasts(engine, now), [message_id]) == [message_id]

    assert mine(expire_finished_broadcasts(engine, now + timedelta(minutes=1)), [message_id]) == []
    _, history = read(engine, message_id)
    assert [status for status, _, _ in history] == ["completed"]


def test_a_message_finishing_now_or_later_or_never_stays_broadcasting(engine):
    now = utcnow()
    ids = [a_message(engine, now), a_message(engine, now + timedelta(seconds=1)), a_message(engine, None)]

    assert mine(expire_finished_broadcasts(engine, now), ids) == []
    for message_id in ids:
        message, history = read(engine, message_id)
        assert message.status == "broadcasting" and message.updated_at is None and history == []


@pytest.mark.parametrize("status", [s for s in MESSAGE_STATUSES if s != "broadcasting"])
def test_a_message_in_any_other_status_is_never_touched(engine, status):
    now = utcnow()
    message_id = a_message(engine, now - timedelta(hours=1), status=status)

    assert mine(expire_finished_broadcasts(engine, now), [message_id]) == []
    message, history = read(engine, message_id)
    assert message.status == status and message.updated_at is None and history == []


def test_the_events_and_provider_messages_are_left_as_they_are(engine):
    now = utcnow()
    service_id = make_service(engine)
    message_id = make_message(engine, service_id)
    event_id = make_event(engine, service_id, message_id, finishes_at=now - timedelta(seconds=1))
    with unit_of_work(engine) as session:
        session.execute(update(BroadcastMessage).where(BroadcastMessage.id == message_id)
                        .values(finishes_at=now - timedelta(seconds=1)))
        for provider in ("ee", "vodafone"):
            dao.get_or_create_provider_message(session, event_id, provider, get_provider(provider).numbered)

    def provider_side() -> list[tuple[str, str, object, list[str]]]:
        with unit_of_work(engine) as session:
            return [(m.provider, m.status, m.updated_at, [h.status for h in dao.history(session, m.id)])
                    for m in sorted(dao.provider_messages(session, [event_id]), key=lambda m: m.provider)]

    before = provider_side()
    assert mine(expire_finished_broadcasts(engine, now), [message_id]) == [message_id]
    assert provider_side() == before == [("ee", "sending", None, ["sending"]),
                                         ("vodafone", "sending", None, ["sending"])]


def test_a_copy_running_while_another_holds_its_transaction_completes_nothing_twice(database_url, engine):
    """The second copy runs while the first has completed the messages but not yet committed.
    On PostgreSQL it skips the locked rows at once; on SQLite it waits for the write lock and then
    finds them completed. Either way: one completion and one history row per message."""
    now = utcnow()
    ids = [a_message(engine, now - timedelta(seconds=s)) for s in (1, 2, 3)]
    other_engine = get_engine.__wrapped__(database_url)  # another process's connection pool
    second: list[list[Expired]] = []
    try:
        with Session(engine) as session, session.begin():
            first = [m.id for m in dao.complete_finished_messages(session, now) if m.id in ids]
            for message_id in first:
                dao.append_message_history(session, message_id, "completed", "first copy", now)
            thread = threading.Thread(target=lambda: second.append(expire_finished_broadcasts(other_engine, now)))
            thread.start()
            thread.join(2)
            if backend() == "postgresql":
                assert second and mine(second[0], ids) == [], "the second copy waited for, or took, the first's rows"
            else:
                assert thread.is_alive(), "SQLite: the second copy should wait for the first's write lock"
        thread.join(30)
    finally:
        other_engine.dispose()

    assert sorted(first) == sorted(ids) and mine(second[0], ids) == []
    for message_id in ids:
        message, history = read(engine, message_id)
        assert message.status == "completed" and [reason for _, reason, _ in history] == ["first copy"]


def test_many_copies_at_once_complete_each_message_exactly_once(database_url, engine):
    now = utcnow()
    ids = [a_message(engine, now - timedelta(seconds=1 + i)) for i in range(20)]
    engines = [get_engine.__wrapped__(database_url) for _ in range(4)]
    start = threading.Barrier(len(engines))
    results: list[list[uuid.UUID]] = []
    errors: list[BaseException] = []

    def copy(own: Engine) -> None:
        try:
            start.wait(10)
            results.append(mine(expire_finished_broadcasts(own, now), ids))
        except BaseException as error:  # reported below, with the others' results
            errors.append(error)

    threads = [threading.Thread(target=copy, args=(own,)) for own in engines]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        for own in engines:
            own.dispose()

    assert errors == [] and len(results) == len(engines)
    completed = [message_id for result in results for message_id in result]
    assert sorted(completed) == sorted(ids), "each message is completed by exactly one copy"
    for message_id in ids:
        _, history = read(engine, message_id)
        assert [status for status, _, _ in history] == ["completed"]


def test_the_expiry_interval_defaults_to_a_minute_and_must_be_positive(monkeypatch):
    monkeypatch.delenv("EXPIRY_INTERVAL_SECONDS", raising=False)
    assert Settings().expiry_interval_seconds == 60
    for bad in ("0", "-1", "soon"):
        monkeypatch.setenv("EXPIRY_INTERVAL_SECONDS", bad)
        with pytest.raises(ValidationError) as raised:
            Settings()
        assert describe_invalid_settings(raised.value).startswith("invalid configuration: EXPIRY_INTERVAL_SECONDS: ")
    monkeypatch.setenv("EXPIRY_INTERVAL_SECONDS", "0.5")
    assert Settings().expiry_interval_seconds == 0.5

"""Which events still need dispatching, read from the database alone (the record of what was sent),
on the real test database. The database is shared with other tests, so each test looks only at
the events it wrote."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine, update

from broadcasts import dao
from broadcasts.db import unit_of_work
from broadcasts.models import (
    RETURNED_ACK,
    RETURNED_ERROR,
    SENDING,
    TECHNICAL_FAILURE,
    BroadcastEvent,
    utcnow,
)
from broadcasts.providers import get_provider
from broadcasts.resume import Unfinished, events_to_dispatch
from broadcasts.settings import Settings
from tests.factories import make_event, make_message, make_service

ENABLED = ("ee", "three", "o2", "vodafone")
GRACE = timedelta(seconds=30)


def written_ago(engine: Engine, seconds: float = 60, **service_options) -> uuid.UUID:  # type: ignore[no-untyped-def]
    """An alert of a fresh service, written `seconds` ago, finishing in an hour."""
    service_id = make_service(engine, **service_options)
    return make_event(engine, service_id, make_message(engine, service_id),
                      sent_at=utcnow() - timedelta(seconds=seconds))


def set_status(engine: Engine, event_id: uuid.UUID, **statuses: str) -> None:
    """Give the event's provider messages these statuses, as dispatch records them."""
    with unit_of_work(engine) as session:
        for provider, status in statuses.items():
            message = dao.get_or_create_provider_message(session, event_id, provider, get_provider(provider).numbered)
            if status != SENDING:
                dao.append_status(session, message, status, attempt=1)


def refuse(engine: Engine, event_id: uuid.UUID, *providers: str) -> None:
    with unit_of_work(engine) as session:
        for provider in providers:
            dao.record_refusal(session, event_id, provider, f"{provider} refused for a test")


def to_dispatch(engine: Engine, *event_ids: uuid.UUID, now: datetime | None = None,
                grace: timedelta = GRACE, enabled=ENABLED) -> dict[uuid.UUID, str]:  # type: ignore[no-untyped-def]
    with unit_of_work(engine) as session:
        found = events_to_dispatch(session, now or utcnow(), grace, enabled)
    assert all(isinstance(u, Unfinished) for u in found)
    return {u.event_id: u.reason for u in found if u.event_id in event_ids}


def test_an_event_with_no_provider_message_was_never_dispatched(engine):
    event_id = written_ago(engine)
    assert to_dispatch(engine, event_id) == {event_id: "never dispatched: no provider message"}


def test_an_event_acknowledged_by_every_provider_needs_nothing(engine):
    event_id = written_ago(engine)
    set_status(engine, event_id, **dict.fromkeys(ENABLED, RETURNED_ACK))
    assert to_dispatch(engine, event_id) == {}


def test_technical_failure_is_left_to_an_operator(engine):
    event_id = written_ago(engine)
    set_status(engine, event_id, ee=TECHNICAL_FAILURE, three=RETURNED_ACK, o2=RETURNED_ACK, vodafone=RETURNED_ACK)
    assert to_dispatch(engine, event_id) == {}


def test_a_partly_acknowledged_event_names_each_unfinished_provider_in_enabled_order(engine):
    event_id = written_ago(engine)
    set_status(engine, event_id, ee=RETURNED_ACK, vodafone=SENDING, o2=RETURNED_ERROR)
    assert to_dispatch(engine, event_id) == {event_id: (
        "three, o2, vodafone not acknowledged "
        "(three no provider message, o2 returned-error, vodafone sending)"
    )}


def test_messages_under_way_for_every_provider(engine):
    event_id = written_ago(engine)
    set_status(engine, event_id, ee=RETURNED_ERROR, three=RETURNED_ACK, o2=SENDING, vodafone=RETURNED_ACK)
    assert to_dispatch(engine, event_id) == {
        event_id: "ee, o2 not acknowledged (ee returned-error, o2 sending)"
    }


def test_an_expired_event_is_not_dispatched_whatever_its_state(engine):
    never, under_way = written_ago(engine), written_ago(engine)
    set_status(engine, under_way, ee=SENDING)
    later = utcnow() + timedelta(hours=2)  # both finish in an hour
    assert to_dispatch(engine, never, under_way, now=later) == {}


def test_the_finish_time_is_the_events_own_else_its_messages(engine):
    own_finish_passed, message_finish = written_ago(engine), written_ago(engine)
    with unit_of_work(engine) as session:
        session.execute(update(BroadcastEvent).where(BroadcastEvent.id == own_finish_passed)
                        .values(transmitted_finishes_at=utcnow() - timedelta(seconds=1)))
        session.execute(update(BroadcastEvent).where(BroadcastEvent.id == message_finish)
                        .values(transmitted_finishes_at=None))
    # The message finishes in an hour: the event without its own finish time is still sendable.
    assert set(to_dispatch(engine, own_finish_passed, message_finish)) == {message_finish}
    assert to_dispatch(engine, message_finish, now=utcnow() + timedelta(hours=2)) == {}


def test_an_event_within_the_grace_period_is_left_to_its_trigger(engine):
    recent, at_the_boundary = written_ago(engine, seconds=5), written_ago(engine, seconds=60)
    with unit_of_work(engine) as session:
        sent_at = dao.get_event(session, at_the_boundary).sent_at
    assert set(to_dispatch(engine, recent, at_the_boundary, now=sent_at + GRACE)) == {at_the_boundary}


def test_an_event_refused_for_every_provider_needs_nothing(engine):
    event_id = written_ago(engine)
    refuse(engine, event_id, *ENABLED)
    assert to_dispatch(engine, event_id) == {}


def test_a_provider_refused_is_not_dispatched_but_the_others_are(engine):
    event_id = written_ago(engine)
    refuse(engine, event_id, "ee", "three")
    set_status(engine, event_id, o2=RETURNED_ACK)
    assert to_dispatch(engine, event_id) == {event_id: "vodafone not acknowledged (vodafone no provider message)"}


def test_a_replay_under_way_after_a_refusal_is_unfinished_as_a_later_event_would_wait_for_it(engine):
    event_id = written_ago(engine)
    refuse(engine, event_id, *ENABLED)
    set_status(engine, event_id, ee=RETURNED_ERROR)  # a replay once the service was live again
    assert to_dispatch(engine, event_id) == {event_id: "ee not acknowledged (ee returned-error)"}


def test_events_that_every_provider_would_refuse_are_not_dispatched(engine):
    stubbed_service = make_service(engine)
    stubbed = make_event(engine, stubbed_service, make_message(engine, stubbed_service, stubbed=True),
                         sent_at=utcnow() - timedelta(minutes=1))
    inactive = written_ago(engine, active=False)
    trial = written_ago(engine, restricted=True)
    assert to_dispatch(engine, stubbed, inactive, trial) == {}


def test_only_the_services_available_providers_count(engine):
    ee_only = written_ago(engine, providers=["ee", "o2"])
    set_status(engine, ee_only, ee=RETURNED_ACK)
    assert to_dispatch(engine, ee_only) == {ee_only: "o2 not acknowledged (o2 no provider message)"}
    # o2 is not enabled here: everything this service may use has acknowledged.
    assert to_dispatch(engine, ee_only, enabled=("ee", "three")) == {}


def test_a_service_with_no_enabled_provider_has_nothing_to_dispatch(engine):
    event_id = written_ago(engine, providers=["vodafone"])
    assert to_dispatch(engine, event_id, enabled=("ee",)) == {}


def test_events_come_oldest_first(engine):
    newer, older = written_ago(engine, seconds=60), written_ago(engine, seconds=120)
    with unit_of_work(engine) as session:
        found = [u.event_id for u in events_to_dispatch(session, utcnow(), GRACE, ENABLED)]
    assert [e for e in found if e in (newer, older)] == [older, newer]


def test_the_resume_settings_default_and_must_be_positive(monkeypatch):
    for name in ("RESUME_INTERVAL_SECONDS", "RESUME_GRACE_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    defaults = Settings()
    assert (defaults.resume_interval_seconds, defaults.resume_grace_seconds) == (60, 30)
    for name in ("RESUME_INTERVAL_SECONDS", "RESUME_GRACE_SECONDS"):
        monkeypatch.setenv(name, "0")
        with pytest.raises(ValidationError, match=name.lower()):
            Settings()
        monkeypatch.setenv(name, "0.5")
        assert getattr(Settings(), name.lower()) == 0.5
        monkeypatch.delenv(name)

"""Every attempt ends with a record an operator can read, and nothing silently stops a network:
unexpected errors, waits, refusals, finish times, the payload fixed per identifier, and the
re-checks made once the per-message lock and the provider slot are held (docs/behaviour.md §4)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import event, func, select, update
from sqlalchemy.exc import OperationalError

from broadcasts import dispatch, send_lock
from broadcasts.cbc_proxy import CBCProxy, get_proxy
from broadcasts.db import unit_of_work
from broadcasts.errors import (
    AllRoutesFailed,
    BroadcastCancelled,
    EarlierEventFailed,
    EarlierEventPending,
    EventExpired,
    InvalidBroadcast,
    MessageStubbed,
    SendInProgress,
    UnexpectedError,
)
from broadcasts.models import (
    BroadcastEvent,
    BroadcastEventRefusal,
    BroadcastMessage,
    ServiceBroadcastSettings,
    utcnow,
)
from broadcasts.settings import get_settings
from tasks.send_to_provider import should_retry
from tests.factories import make_alert, make_event, make_message, make_service
from tests.flows.helpers import provider_message_count, statuses


def send(engine, event_id, provider="ee", **options):  # type: ignore[no-untyped-def]
    return dispatch.send_once(engine, options.pop("proxy", None) or get_proxy(get_settings()), event_id,
                                     provider, headline="h", enabled=["ee", "three", "o2", "vodafone"], **options)


def fail_both_routes(sim, provider="ee", times=1):  # type: ignore[no-untyped-def]
    sim.fault(f"{provider}-1-proxy", http_status=500, times=2 * times)
    sim.fault(f"{provider}-2-proxy", http_status=500, times=2 * times)


def retried(error: Exception) -> bool:
    return should_retry(None, None, SimpleNamespace(data=error))


def set_event(engine, event_id, **values):  # type: ignore[no-untyped-def]
    """Writes the event row as another writer might."""
    with unit_of_work(engine) as session:
        session.execute(update(BroadcastEvent).where(BroadcastEvent.id == event_id).values(**values))


# --- an unexpected error ends the message, with its type and message ------------------------


class ExplodingLambda:
    """A Lambda client failing in a way no route failure covers (a bug, not the network)."""

    def invoke(self, **_kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom in the client")


def test_an_unexpected_error_from_the_proxy_call_ends_technical_failure_and_is_not_retried(environment, engine, sim):
    service_id = make_service(engine)
    message_id = make_message(engine, service_id)
    alert = make_event(engine, service_id, message_id)
    with pytest.raises(UnexpectedError) as raised:
        send(engine, alert, proxy=CBCProxy(ExplodingLambda()))
    assert not retried(raised.value)
    ee = statuses(engine, alert)["ee"]
    assert ee.status == "technical-failure"
    assert "unexpected RuntimeError: boom in the client" in ee.last_error
    assert f"broadcasts replay {alert} ee" in ee.last_error
    # A later event is blocked with the replay command, not left waiting until it expires.
    later = make_event(engine, service_id, message_id, message_type="update")
    with pytest.raises(EarlierEventFailed):
        send(engine, later)


def test_a_malformed_row_ends_technical_failure_saying_what_is_wrong(environment, engine, sim):
    _, _, event_id = make_alert(engine)
    set_event(engine, event_id, transmitted_content="Flood warning")  # not {"body": ...}
    with pytest.raises(InvalidBroadcast):
        send(engine, event_id)
    ee = statuses(engine, event_id)["ee"]
    assert ee.status == "technical-failure" and "transmitted_content is str, not an object" in ee.last_error
    assert sim.invocations() == []


def test_an_unexpected_error_in_the_checks_is_recorded_before_any_call(environment, engine, sim):
    _, _, event_id = make_alert(engine)

    def broken_clock():  # type: ignore[no-untyped-def]
        raise ZeroDivisionError("clock bug")

    with pytest.raises(UnexpectedError):
        send(engine, event_id, now=broken_clock)
    ee = statuses(engine, event_id)["ee"]
    assert ee.status == "technical-failure" and "unexpected ZeroDivisionError: clock bug" in ee.last_error
    assert sim.invocations() == []


# --- waits and refusals are visible ----------------------------------------------------------


def update_behind_a_failing_alert(engine, sim):  # type: ignore[no-untyped-def]
    """(alert, update) of one broadcast: the alert's first attempt failed on ee, so the update
    must wait for it there."""
    service_id = make_service(engine)
    message_id = make_message(engine, service_id)
    alert = make_event(engine, service_id, message_id)
    fail_both_routes(sim)
    with pytest.raises(AllRoutesFailed):
        send(engine, alert)
    return alert, make_event(engine, service_id, message_id, message_type="update")


def test_a_wait_is_recorded_once_per_earlier_event_not_once_per_retry(environment, engine, sim):
    alert, update_id = update_behind_a_failing_alert(engine, sim)
    for _ in range(3):
        with pytest.raises(EarlierEventPending):
            send(engine, update_id)
    ee = statuses(engine, update_id)["ee"]
    assert ee.status == "sending"
    waits = [h.detail for h in ee.history if h.detail and "waiting_for" in h.detail]
    reason = f"waiting for event {alert} (alert, not yet acknowledged by ee)"
    assert waits == [{"waiting_for": str(alert), "reason": reason}]
    assert ee.last_error == reason
    send(engine, alert)
    assert send(engine, update_id).status == "returned-ack"


@pytest.mark.parametrize("refusal", ["stubbed", "cancelled"])
def test_a_refusal_is_recorded_once_against_the_event_and_provider_without_an_identifier(environment, engine, sim, refusal):
    service_id = make_service(engine)
    message_id = make_message(engine, service_id, stubbed=refusal == "stubbed")
    start = utcnow()
    event_id = make_event(engine, service_id, message_id, sent_at=start)
    if refusal == "cancelled":  # another writer adds an update after the cancel
        make_event(engine, service_id, message_id, message_type="cancel", sent_at=start + timedelta(seconds=1))
        event_id = make_event(engine, service_id, message_id, message_type="update", sent_at=start + timedelta(seconds=2))
    expected = MessageStubbed if refusal == "stubbed" else BroadcastCancelled
    for _ in range(2):
        with pytest.raises(expected) as raised:
            send(engine, event_id)
        assert not retried(raised.value)
    ee = statuses(engine, event_id)["ee"]
    assert (ee.status, ee.identifier, ee.last_error) == ("refused", None, str(raised.value))
    assert provider_message_count(engine, event_id) == 0
    with unit_of_work(engine) as session:
        assert session.scalar(select(func.count()).select_from(BroadcastEventRefusal)
                              .where(BroadcastEventRefusal.broadcast_event_id == event_id)) == 1
    assert sim.invocations() == []


def test_a_cancel_after_a_cancel_is_still_sent(environment, engine, sim):
    service_id = make_service(engine)
    message_id = make_message(engine, service_id)
    start = utcnow()
    alert = make_event(engine, service_id, message_id, sent_at=start)
    send(engine, alert)  # acknowledged before its cancels are written, so not superseded
    first = make_event(engine, service_id, message_id, message_type="cancel", sent_at=start + timedelta(seconds=1))
    second = make_event(engine, service_id, message_id, message_type="cancel", sent_at=start + timedelta(seconds=2))
    send(engine, first)
    assert send(engine, second).status == "returned-ack"
    assert len(sim.invocations()) == 3


# --- retries are bounded by the event's time ------------------------------------------------


def test_an_event_with_no_finish_time_of_its_own_stops_at_its_messages(environment, engine, sim):
    service_id = make_service(engine)
    message_id = make_message(engine, service_id)
    cancel = make_event(engine, service_id, message_id, message_type="cancel")
    set_event(engine, cancel, transmitted_finishes_at=None)
    fail_both_routes(sim)
    with pytest.raises(AllRoutesFailed) as raised:
        send(engine, cancel)
    with unit_of_work(engine) as session:
        assert raised.value.expires_at == session.get_one(BroadcastMessage, message_id).finishes_at


def test_an_event_with_no_finish_time_at_all_is_not_sent(environment, engine, sim):
    service_id = make_service(engine)
    message_id = make_message(engine, service_id)
    with unit_of_work(engine) as session:
        session.execute(update(BroadcastMessage).where(BroadcastMessage.id == message_id).values(finishes_at=None))
    cancel = make_event(engine, service_id, message_id, message_type="cancel")
    set_event(engine, cancel, transmitted_finishes_at=None)
    with pytest.raises(InvalidBroadcast, match="no finish time"):
        send(engine, cancel)
    assert statuses(engine, cancel)["ee"].status == "technical-failure" and sim.invocations() == []


def test_an_alert_longer_than_retries_cover_written_by_another_writer_is_not_sent(environment, engine, sim):
    service_id = make_service(engine)
    event_id = make_event(engine, service_id, make_message(engine, service_id), expires_in=timedelta(days=30))
    with pytest.raises(InvalidBroadcast, match="more than 7 days away"):
        send(engine, event_id)
    assert statuses(engine, event_id)["ee"].status == "technical-failure" and sim.invocations() == []


def test_when_recording_expiry_fails_the_task_retries_once_more_and_that_attempt_records_it(configure, engine, sim):
    _, _, event_id = make_alert(engine)
    fail_both_routes(sim)
    with pytest.raises(AllRoutesFailed) as raised:
        send(engine, event_id)
    error = raised.value
    error.expires_at = utcnow() - timedelta(seconds=1)
    set_event(engine, event_id, transmitted_finishes_at=error.expires_at)
    database = get_settings().database_url
    configure(DATABASE_URL="postgresql://postgres@127.0.0.1:1/down")  # the database is down
    assert retried(error) is True
    assert statuses(engine, event_id)["ee"].status == "returned-error"
    configure(DATABASE_URL=database)
    with pytest.raises(EventExpired):  # the retry: it finds the event expired and records it
        send(engine, event_id)
    ee = statuses(engine, event_id)["ee"]
    assert ee.status == "technical-failure" and "expired while retrying" in ee.last_error
    assert len(sim.invocations()) == 4  # the one attempt, on its four routes


def test_expiry_is_not_recorded_over_another_runs_call_in_flight(environment, engine, sim):
    _, _, event_id = make_alert(engine)
    fail_both_routes(sim)
    with pytest.raises(AllRoutesFailed):
        send(engine, event_id)
    ee = statuses(engine, event_id)["ee"]
    busy = SendInProgress(event_id, "ee")
    busy.event_id, busy.provider, busy.expires_at = event_id, "ee", utcnow() - timedelta(seconds=1)
    with send_lock.exclusive(engine, ee.identifier) as held:  # another run is mid-call
        assert held
        assert retried(busy) is False
    assert statuses(engine, event_id)["ee"].status == "returned-error"


def test_a_replay_of_an_event_that_expired_before_any_attempt_says_expired(environment, engine, sim):
    _, update_id = update_behind_a_failing_alert(engine, sim)
    with pytest.raises(EarlierEventPending):  # created and waiting; never attempted
        send(engine, update_id)
    set_event(engine, update_id, transmitted_finishes_at=utcnow() - timedelta(seconds=1))
    with pytest.raises(EventExpired) as raised:
        send(engine, update_id)
    assert raised.value.reason == "expired"


# --- one identifier, one message ------------------------------------------------------------


def test_a_channel_changed_between_attempts_does_not_change_what_the_identifier_carries(environment, engine, sim):
    service_id, _, event_id = make_alert(engine, channel="severe")
    fail_both_routes(sim, "vodafone")
    with pytest.raises(AllRoutesFailed):
        send(engine, event_id, "vodafone")
    with unit_of_work(engine) as session:
        session.execute(update(ServiceBroadcastSettings).where(ServiceBroadcastSettings.service_id == service_id)
                        .values(channel="government"))
    send(engine, event_id, "vodafone")
    payloads = [{k: v for k, v in call["payload"].items() if k != "cbc_target"} for call in sim.invocations()]
    assert len(payloads) == 5 and all(p == payloads[0] for p in payloads)  # a failed attempt on four routes, the ack
    assert payloads[0]["channel"] == "severe"


# --- the re-checks once the lock and the slot are held --------------------------------------


def test_a_message_acknowledged_by_another_run_while_this_one_prepared_is_not_sent_again(
    environment, engine, sim, monkeypatch
):
    _, _, event_id = make_alert(engine)
    real_exclusive = send_lock.exclusive

    @contextmanager
    def another_run_finishes_first(engine_, key):  # type: ignore[no-untyped-def]
        monkeypatch.setattr(send_lock, "exclusive", real_exclusive)
        send(engine, event_id)  # the other run: its checks, its lock, its call, its ACK
        with real_exclusive(engine_, key) as held:
            yield held

    monkeypatch.setattr(send_lock, "exclusive", another_run_finishes_first)
    result = send(engine, event_id)

    assert (result.status, result.sent_now) == ("returned-ack", False)
    assert len(sim.invocations()) == 1


def test_a_slot_wait_that_outlasts_expiry_ends_expired_with_no_call(environment, engine, sim):
    service_id = make_service(engine)
    event_id = make_event(engine, service_id, make_message(engine, service_id), expires_in=timedelta(seconds=0.5))

    @contextmanager
    def slow_slot():  # type: ignore[no-untyped-def]
        time.sleep(1)  # another send holds the slot past this event's expiry
        yield None

    with pytest.raises(EventExpired):
        send(engine, event_id, provider_slot=slow_slot)
    ee = statuses(engine, event_id)["ee"]
    assert sim.invocations() == []
    assert ee.status == "technical-failure" and ee.history[-1].attempt is None
    assert uuid.UUID(str(ee.identifier))


@pytest.mark.parametrize("fails", [False, True], ids=["acknowledged", "failed"])
def test_the_outcome_is_recorded_before_the_provider_slot_is_given_back(environment, engine, sim, fails):
    """The next send to the network waits for the slot; it must then find this one finished, or
    a later event of the broadcast would wait a retry for an ACK already received."""
    _, _, event_id = make_alert(engine)
    if fails:
        fail_both_routes(sim)
    seen_at_release = []

    @contextmanager
    def slot():  # type: ignore[no-untyped-def]
        yield None
        seen_at_release.append(statuses(engine, event_id)["ee"].status)

    if fails:
        with pytest.raises(AllRoutesFailed):
            send(engine, event_id, provider_slot=slot)
    else:
        send(engine, event_id, provider_slot=slot)
    assert seen_at_release == ["returned-error" if fails else "returned-ack"]


# --- the outcome of a call is recorded, whatever the database does meanwhile ----------------


class _RefusingConnectionsAfterTheCall:
    """The real proxy; once it has answered, the database refuses new connections for
    `refuse_seconds` (as PostgreSQL does when it has run out: "too many clients already") and
    the pool's idle connections are gone, so writing the outcome cannot borrow one."""

    def __init__(self, engine, refuse_seconds: float) -> None:  # type: ignore[no-untyped-def]
        self._proxy, self._engine, self._refuse_seconds = get_proxy(get_settings()), engine, refuse_seconds
        self.refused = 0
        self.until = 0.0

    def routes(self, provider):  # type: ignore[no-untyped-def]
        return self._proxy.routes(provider)

    def send(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        delivered = self._proxy.send(*args, **kwargs)
        self._engine.pool.dispose()
        self.until = time.monotonic() + self._refuse_seconds
        return delivered

    def connect(self, dialect, record, cargs, cparams):  # type: ignore[no-untyped-def]
        if time.monotonic() < self.until:
            self.refused += 1
            raise dialect.loaded_dbapi.OperationalError("sorry, too many clients already")
        return None  # the dialect connects as usual


def test_an_acknowledgement_is_recorded_while_the_database_refuses_new_connections(environment, engine, sim):
    """Unrecorded, an acknowledged message looks unsent, and the next attempt sends it again. On
    PostgreSQL the record goes on the per-message lock's own connection; on SQLite (no server to
    run out of connections) it is tried again for a few seconds."""
    _, _, event_id = make_alert(engine)
    proxy = _RefusingConnectionsAfterTheCall(engine, refuse_seconds=0.5)
    event.listen(engine, "do_connect", proxy.connect)
    try:
        result = send(engine, event_id, proxy=proxy)
    finally:
        event.remove(engine, "do_connect", proxy.connect)
    assert (result.status, result.sent_now) == ("returned-ack", True)
    assert statuses(engine, event_id)["ee"].status == "returned-ack"
    assert len(sim.invocations()) == 1
    if engine.dialect.name == "postgresql":
        assert proxy.refused == 0  # it needed no new connection
    else:
        assert proxy.refused >= 1


@contextmanager
def first_status_write_failing(engine, error: Exception) -> Iterator[list[str]]:  # type: ignore[no-untyped-def]
    """The first write of a provider message's status (the record after the call) raises `error`;
    yields the statements it failed."""
    failed: list[str] = []

    def fail_once(connection, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if statement.startswith("UPDATE broadcast_provider_message SET status=") and not failed:
            failed.append(statement)
            raise error

    event.listen(engine, "before_cursor_execute", fail_once)
    try:
        yield failed
    finally:
        event.remove(engine, "before_cursor_execute", fail_once)


def test_a_failed_write_of_the_outcome_is_tried_again_not_left_for_a_resend(environment, engine, sim):
    _, _, event_id = make_alert(engine)
    with first_status_write_failing(engine, OperationalError("UPDATE", {}, Exception("deadlock detected"))) as failed:
        result = send(engine, event_id)
    assert failed and (result.status, result.sent_now) == ("returned-ack", True)
    ee = statuses(engine, event_id)["ee"]
    assert [h.status for h in ee.history] == ["sending", "returned-ack"]
    assert len(sim.invocations()) == 1

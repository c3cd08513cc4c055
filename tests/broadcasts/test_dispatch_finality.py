"""What is final and what only waits (docs/behaviour.md §4): a `technical-failure` message is sent
again only by an operator's replay; a refused or failed earlier event never makes a later send
wait (it blocks an alert or update, and a cancel goes ahead); a wait that outlasts the longest
retry interval pages once; events written in the same second keep the order they were written."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from broadcasts import dao, dispatch, send_lock
from broadcasts.cbc_proxy import CBCProxy
from broadcasts.db import unit_of_work
from broadcasts.errors import (
    AllRoutesFailed,
    CancelAlreadySent,
    EarlierEventPending,
    EarlierEventRefused,
    EndedTechnicalFailure,
    ServiceNotLive,
    UnexpectedError,
)
from broadcasts.models import TECHNICAL_FAILURE, BroadcastEventRefusal, Service, utcnow
from tests.broadcasts.test_dispatch_records import (
    ExplodingLambda,
    fail_both_routes,
    retried,
    send,
    update_behind_a_failing_alert,
)
from tests.broadcasts.test_dao import written_apart
from tests.factories import make_event, make_message, make_service
from tests.flows.helpers import calls_for, statuses

REPLAY = dispatch.Mode(replay_failed=True)


def set_restricted(engine, service_id, restricted: bool) -> None:  # type: ignore[no-untyped-def]
    with unit_of_work(engine) as session:
        session.execute(update(Service).where(Service.id == service_id).values(restricted=restricted))


def refusal_count(engine, event_id) -> int:  # type: ignore[no-untyped-def]
    with unit_of_work(engine) as session:
        return session.scalar(select(func.count()).select_from(BroadcastEventRefusal)
                              .where(BroadcastEventRefusal.broadcast_event_id == event_id))


def refused_mid_retry(engine, sim):  # type: ignore[no-untyped-def]
    """(service, message, alert): the alert failed once on ee, was refused on its retry (the service
    was briefly restricted, so it ended technical-failure), and the service is live again."""
    service_id = make_service(engine)
    message_id = make_message(engine, service_id)
    alert = make_event(engine, service_id, message_id)
    fail_both_routes(sim)
    with pytest.raises(AllRoutesFailed):
        send(engine, alert)
    set_restricted(engine, service_id, True)
    with pytest.raises(ServiceNotLive):
        send(engine, alert)
    set_restricted(engine, service_id, False)
    assert statuses(engine, alert)["ee"].status == TECHNICAL_FAILURE
    return service_id, message_id, alert


# --- technical-failure is final for automatic runs ------------------------------------------


def test_an_automatic_run_neither_sends_nor_records_a_message_refused_mid_retry(environment, engine, sim):
    _, _, alert = refused_mid_retry(engine, sim)
    before, calls, refusals = statuses(engine, alert)["ee"], len(sim.invocations()), refusal_count(engine, alert)

    with pytest.raises(EndedTechnicalFailure) as raised:
        send(engine, alert)

    assert not retried(raised.value)
    assert f"broadcasts replay {alert} ee" in str(raised.value) and "restricted" in str(raised.value)
    assert len(sim.invocations()) == calls
    assert statuses(engine, alert)["ee"].history == before.history and refusal_count(engine, alert) == refusals


def test_an_operator_replay_sends_it_again_with_the_same_identifier_and_payload(environment, engine, sim):
    _, _, alert = refused_mid_retry(engine, sim)
    identifier = statuses(engine, alert)["ee"].identifier

    assert send(engine, alert, mode=REPLAY).status == "returned-ack"

    payloads = [{k: v for k, v in c["payload"].items() if k != "cbc_target"} for c in calls_for(sim, identifier)]
    assert len(payloads) == 5 and all(p == payloads[0] for p in payloads)  # a failed attempt on four routes, then the ack
    assert statuses(engine, alert)["ee"].identifier == identifier


def test_a_message_ended_by_an_unexpected_error_waits_for_a_replay(environment, engine, sim):
    service_id = make_service(engine)
    alert = make_event(engine, service_id, make_message(engine, service_id))
    with pytest.raises(UnexpectedError):
        send(engine, alert, proxy=CBCProxy(ExplodingLambda()))
    with pytest.raises(EndedTechnicalFailure, match="unexpected RuntimeError: boom in the client"):
        send(engine, alert)
    assert sim.invocations() == []
    assert send(engine, alert, mode=REPLAY).status == "returned-ack"


def test_a_run_that_prepared_before_another_ended_the_message_technical_failure_sends_nothing(
    environment, engine, sim, monkeypatch
):
    service_id = make_service(engine)
    alert = make_event(engine, service_id, make_message(engine, service_id))
    fail_both_routes(sim)
    with pytest.raises(AllRoutesFailed):
        send(engine, alert)
    calls = len(sim.invocations())
    real_exclusive = send_lock.exclusive

    @contextmanager
    def another_run_ends_it_first(engine_, key):  # type: ignore[no-untyped-def]
        with unit_of_work(engine) as session:  # e.g. a concurrent run refused it meanwhile
            message = dao.get_provider_message(session, alert, "ee")
            dao.append_status(session, message, TECHNICAL_FAILURE, detail={"error": "refused meanwhile"})
        with real_exclusive(engine_, key) as lock:
            yield lock

    monkeypatch.setattr(send_lock, "exclusive", another_run_ends_it_first)
    with pytest.raises(EndedTechnicalFailure, match="refused meanwhile"):
        send(engine, alert)
    assert len(sim.invocations()) == calls
    assert [h.status for h in statuses(engine, alert)["ee"].history][-1] == TECHNICAL_FAILURE


# --- a refused or failed earlier event never makes a later send wait ------------------------


def update_refused_after_an_acknowledged_alert(engine, sim):  # type: ignore[no-untyped-def]
    """(service, message, alert, update): the alert is acknowledged by ee; the update was refused
    (the service was briefly restricted: a refusal, no provider message); the service is live."""
    service_id = make_service(engine)
    message_id = make_message(engine, service_id)
    start = utcnow()
    alert = make_event(engine, service_id, message_id, sent_at=start)
    send(engine, alert)
    set_restricted(engine, service_id, True)
    update_id = make_event(engine, service_id, message_id, message_type="update", sent_at=start + timedelta(seconds=1))
    with pytest.raises(ServiceNotLive):
        send(engine, update_id)
    set_restricted(engine, service_id, False)
    assert statuses(engine, update_id)["ee"].status == "refused"
    return service_id, message_id, alert, update_id


def test_a_cancel_behind_a_refused_update_is_sent_at_once(environment, engine, sim):
    service_id, message_id, alert, _ = update_refused_after_an_acknowledged_alert(engine, sim)
    cancel = make_event(engine, service_id, message_id, message_type="cancel", sent_at=utcnow() + timedelta(seconds=2))

    assert send(engine, cancel).status == "returned-ack"

    sent = calls_for(sim, statuses(engine, cancel)["ee"].identifier)[0]["payload"]
    assert [r["message_id"] for r in sent["references"]] == [str(statuses(engine, alert)["ee"].identifier)]


def test_an_update_behind_a_refused_update_is_blocked_naming_the_refusal_and_the_replays(environment, engine, sim):
    service_id, message_id, _, refused = update_refused_after_an_acknowledged_alert(engine, sim)
    later = make_event(engine, service_id, message_id, message_type="update", sent_at=utcnow() + timedelta(seconds=2))
    calls = len(sim.invocations())

    with pytest.raises(EarlierEventRefused) as raised:
        send(engine, later)

    assert not retried(raised.value) and len(sim.invocations()) == calls
    ee = statuses(engine, later)["ee"]
    assert ee.status == TECHNICAL_FAILURE and ee.last_error == str(raised.value)
    assert f"earlier event {refused} was refused" in ee.last_error and "restricted" in ee.last_error
    assert f"broadcasts replay {refused} ee" in ee.last_error and f"broadcasts replay {later} ee" in ee.last_error


def test_a_cancel_behind_an_alert_that_ended_technical_failure_is_sent_referring_to_it(environment, engine, sim):
    service_id = make_service(engine)
    message_id = make_message(engine, service_id)
    alert = make_event(engine, service_id, message_id, sent_at=utcnow())
    with pytest.raises(UnexpectedError):  # the network may still hold it: the answer was lost
        send(engine, alert, proxy=CBCProxy(ExplodingLambda()))
    cancel = make_event(engine, service_id, message_id, message_type="cancel", sent_at=utcnow() + timedelta(seconds=1))

    assert send(engine, cancel).status == "returned-ack"

    sent = calls_for(sim, statuses(engine, cancel)["ee"].identifier)[0]["payload"]
    assert [r["message_id"] for r in sent["references"]] == [str(statuses(engine, alert)["ee"].identifier)]


def test_a_replay_of_an_alert_after_its_cancel_reached_the_network_is_refused(environment, engine, sim):
    service_id = make_service(engine)
    message_id = make_message(engine, service_id)
    alert = make_event(engine, service_id, message_id, sent_at=utcnow())
    with pytest.raises(UnexpectedError):
        send(engine, alert, proxy=CBCProxy(ExplodingLambda()))
    cancel = make_event(engine, service_id, message_id, message_type="cancel", sent_at=utcnow() + timedelta(seconds=1))
    assert send(engine, cancel).status == "returned-ack"
    calls = len(sim.invocations())

    with pytest.raises(CancelAlreadySent, match=f"cancel {cancel} of its broadcast was already sent to ee"):
        send(engine, alert, mode=REPLAY)  # what the blocked-event notice told the operator to run

    assert len(sim.invocations()) == calls
    assert statuses(engine, alert)["ee"].status == TECHNICAL_FAILURE




# --- a long wait pages once ------------------------------------------------------------------


def test_a_wait_longer_than_the_longest_retry_interval_pages_once_per_earlier_event(environment, engine, sim):
    alert, update_id = update_behind_a_failing_alert(engine, sim)
    mode = dispatch.Mode(long_wait_seconds=240)
    later = [utcnow() + timedelta(seconds=s) for s in (0, 239, 241, 300, 900)]
    found = []
    for moment in later:  # retries of the waiting update, as late as these
        with pytest.raises(EarlierEventPending) as raised:
            send(engine, update_id, mode=mode, now=lambda moment=moment: moment)
        found.append(raised.value.page_due)

    assert found == [False, False, True, False, False]
    waits = [h.detail for h in statuses(engine, update_id)["ee"].history if h.detail and "waiting_for" in h.detail]
    assert [w.get("paged", False) for w in waits] == [False, True]
    assert waits[1]["waiting_for"] == str(alert) and 240 < waits[1]["waited_seconds"] < 243
    assert retried(raised.value)


# --- events written in the same second --------------------------------------------------------


def test_of_two_events_sent_in_the_same_second_the_later_written_waits_and_refers_to_the_other(environment, engine, sim):
    service_id = make_service(engine)
    message_id = make_message(engine, service_id)
    start = utcnow()
    alert = make_event(engine, service_id, message_id, sent_at=start)
    first = make_event(engine, service_id, message_id, message_type="update", sent_at=start + timedelta(seconds=1))
    written_apart()
    second = make_event(engine, service_id, message_id, message_type="update", sent_at=start + timedelta(seconds=1))
    send(engine, alert)

    with pytest.raises(EarlierEventPending) as raised:
        send(engine, second)
    assert raised.value.earlier_event_id == first

    send(engine, first)
    send(engine, second)
    sent = calls_for(sim, statuses(engine, second)["ee"].identifier)[0]["payload"]
    assert [r["message_id"] for r in sent["references"]] == [
        str(statuses(engine, e)["ee"].identifier) for e in (alert, first)
    ]

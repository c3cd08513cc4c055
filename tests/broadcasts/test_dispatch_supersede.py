"""A cancel supersedes an alert or update its network has not acknowledged (docs/behaviour.md §4
rule 6), against the test database and the simulator over HTTP: the pending send stops, recorded
`superseded` (not failed), the cancel is sent and refers to it, nothing acknowledged changes, and
the two races: a cancel written while the alert's call is in flight, and an alert acknowledged
just before the cancel is written."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from datetime import timedelta

import pytest

from broadcasts import dao, dispatch, send_lock
from broadcasts.db import unit_of_work
from broadcasts.errors import AllRoutesFailed, BroadcastCancelled, EarlierEventPending, Superseded
from broadcasts.models import SUPERSEDED, utcnow
from broadcasts.status import event_status
from deployments.report import status_lines
from tests.broadcasts.test_dispatch_records import fail_both_routes, retried, send
from tests.factories import make_event, make_message, make_service
from tests.flows.helpers import calls_for, statuses

REPLAY = dispatch.Mode(replay_failed=True)


def broadcast(engine):  # type: ignore[no-untyped-def]
    service_id = make_service(engine)
    return service_id, make_message(engine, service_id)


def write_cancel(engine, service_id, message_id):  # type: ignore[no-untyped-def]
    return make_event(engine, service_id, message_id, message_type="cancel", sent_at=utcnow() + timedelta(seconds=1))


def failing_alert(engine, sim):  # type: ignore[no-untyped-def]
    """(service, message, alert): the alert's every call to ee fails; one attempt has failed."""
    service_id, message_id = broadcast(engine)
    alert = make_event(engine, service_id, message_id, sent_at=utcnow())
    sim.fault("ee-1-proxy", http_status=500)
    sim.fault("ee-2-proxy", http_status=500)
    with pytest.raises(AllRoutesFailed):
        send(engine, alert)
    return service_id, message_id, alert


def references(sim, engine, cancel, provider="ee"):  # type: ignore[no-untyped-def]
    [call] = calls_for(sim, statuses(engine, cancel)[provider].identifier)
    return [r["message_id"] for r in call["payload"]["references"]]


def test_a_cancel_supersedes_an_alert_its_network_keeps_failing_and_is_sent_referring_to_it(environment, engine, sim):
    service_id, message_id, alert = failing_alert(engine, sim)
    cancel = write_cancel(engine, service_id, message_id)
    sim.reset()  # the network takes the cancel

    assert send(engine, cancel).status == "returned-ack"

    ee = statuses(engine, alert)["ee"]
    assert ee.status == SUPERSEDED and [h.status for h in ee.history] == ["sending", "returned-error", SUPERSEDED]
    assert ee.history[-1].detail["superseded_by"] == str(cancel)
    assert ee.last_error.startswith(f"superseded by cancel {cancel}")
    assert references(sim, engine, cancel) == [str(ee.identifier)]
    with pytest.raises(Superseded) as raised:  # the alert's own retry: final, no call
        send(engine, alert)
    assert not retried(raised.value) and raised.value.cancel_event_id == cancel
    assert calls_for(sim, ee.identifier) == []
    assert statuses(engine, alert)["ee"].history == ee.history  # nothing more recorded


def test_the_alerts_own_next_attempt_supersedes_it_before_any_call(environment, engine, sim):
    service_id, message_id, alert = failing_alert(engine, sim)
    calls = len(sim.invocations())
    cancel = write_cancel(engine, service_id, message_id)

    with pytest.raises(Superseded):
        send(engine, alert)

    assert len(sim.invocations()) == calls
    assert statuses(engine, alert)["ee"].status == SUPERSEDED
    sim.reset()
    assert send(engine, cancel).status == "returned-ack"
    assert references(sim, engine, cancel) == [str(statuses(engine, alert)["ee"].identifier)]


def test_an_update_behind_a_superseded_alert_is_superseded_too(environment, engine, sim):
    service_id, message_id, alert = failing_alert(engine, sim)
    update = make_event(engine, service_id, message_id, message_type="update", sent_at=utcnow() + timedelta(seconds=1))
    with pytest.raises(EarlierEventPending):  # it waits for the alert
        send(engine, update)
    cancel = make_event(engine, service_id, message_id, message_type="cancel", sent_at=utcnow() + timedelta(seconds=2))
    sim.reset()

    assert send(engine, cancel).status == "returned-ack"

    found = {event: statuses(engine, event)["ee"] for event in (alert, update)}
    assert {event: s.status for event, s in found.items()} == {alert: SUPERSEDED, update: SUPERSEDED}
    assert calls_for(sim, found[update].identifier) == []  # the update never reached the network
    assert references(sim, engine, cancel) == [str(found[alert].identifier), str(found[update].identifier)]
    with pytest.raises(Superseded):
        send(engine, update)


def test_an_alert_never_attempted_before_its_cancel_is_superseded_without_a_call_and_the_cancel_refers_to_it(
    environment, engine, sim
):
    service_id, message_id = broadcast(engine)
    alert = make_event(engine, service_id, message_id, sent_at=utcnow())
    cancel = write_cancel(engine, service_id, message_id)  # written before the alert's run started

    assert send(engine, cancel).status == "returned-ack"
    ee = statuses(engine, alert)["ee"]
    assert ee.status == SUPERSEDED and ee.history[-1].detail["superseded_by"] == str(cancel)
    with pytest.raises(Superseded):  # its run, when it comes
        send(engine, alert)
    assert calls_for(sim, ee.identifier) == []
    assert [c["payload"]["message_type"] for c in sim.invocations()] == ["cancel"]
    assert references(sim, engine, cancel) == [str(ee.identifier)]  # a cancel always refers to something


def test_an_acknowledged_alert_is_never_superseded(environment, engine, sim):
    """The race where the alert is acknowledged just before the cancel is written."""
    service_id, message_id = broadcast(engine)
    alert = make_event(engine, service_id, message_id, sent_at=utcnow())
    assert send(engine, alert).status == "returned-ack"
    cancel = write_cancel(engine, service_id, message_id)

    assert send(engine, cancel).status == "returned-ack"
    assert send(engine, alert).sent_now is False  # a replay finds it acknowledged

    ee = statuses(engine, alert)["ee"]
    assert [h.status for h in ee.history] == ["sending", "returned-ack"]
    assert references(sim, engine, cancel) == [str(ee.identifier)]


@pytest.mark.parametrize("answer", ["ack", "failure"])
def test_a_cancel_written_while_the_alerts_call_is_in_flight_waits_for_its_outcome(environment, engine, sim, answer):
    """The in-flight call's outcome is recorded by the run that made it: an ACK stays, and the
    cancel refers to it; a failure is recorded, then the next attempt supersedes it."""
    service_id, message_id = broadcast(engine)
    alert = make_event(engine, service_id, message_id, sent_at=utcnow())
    # In flight for 1.5 s (under the test's 2 s read timeout): time to write the cancel and try it.
    sim.fault("ee-1-proxy", cbc_target="cbc_a", delay_seconds=1.5, times=1,
              **({"http_status": 500} if answer == "failure" else {}))
    if answer == "failure":  # and the attempt's three other routes
        sim.fault("ee-1-proxy", cbc_target="cbc_b", http_status=500, times=1)
        sim.fault("ee-2-proxy", http_status=500, times=2)
    outcome = {}

    def alert_run() -> None:
        try:
            outcome["alert"] = send(engine, alert).status
        except AllRoutesFailed as error:
            outcome["alert"] = error

    thread = threading.Thread(target=alert_run)
    thread.start()
    deadline = utcnow() + timedelta(seconds=10)
    while not sim.invocations() and utcnow() < deadline:  # the call is in flight
        threading.Event().wait(0.05)
    cancel = write_cancel(engine, service_id, message_id)
    with pytest.raises(EarlierEventPending):  # it cannot take the alert's lock: it waits
        send(engine, cancel)
    assert statuses(engine, alert)["ee"].status == "sending"
    thread.join(10)

    ee = statuses(engine, alert)["ee"]
    if answer == "ack":
        assert outcome["alert"] == "returned-ack" and ee.status == "returned-ack"
    else:
        assert isinstance(outcome["alert"], AllRoutesFailed) and ee.status == "returned-error"
    assert send(engine, cancel).status == "returned-ack"
    final = statuses(engine, alert)["ee"]
    expected = ["sending", "returned-ack"] if answer == "ack" else ["sending", "returned-error", SUPERSEDED]
    assert [h.status for h in final.history] == expected
    assert references(sim, engine, cancel) == [str(ee.identifier)]
    alert_calls = [c for c in sim.invocations() if c["payload"]["message_type"] == "alert"]
    cancel_call = next(c for c in sim.invocations() if c["payload"]["message_type"] == "cancel")
    assert all(c["received_at"] < cancel_call["received_at"] for c in alert_calls)


def test_a_cancel_written_after_the_alert_prepared_stops_it_under_its_lock_before_the_call(
    environment, engine, sim, monkeypatch
):
    service_id, message_id, alert = failing_alert(engine, sim)
    calls = len(sim.invocations())
    real_exclusive = send_lock.exclusive
    written = []

    @contextmanager
    def cancel_written_meanwhile(engine_, key):  # type: ignore[no-untyped-def]
        written.append(write_cancel(engine, service_id, message_id))
        with real_exclusive(engine_, key) as lock:
            yield lock

    monkeypatch.setattr(send_lock, "exclusive", cancel_written_meanwhile)
    with pytest.raises(Superseded) as raised:
        send(engine, alert)

    assert raised.value.cancel_event_id == written[0]
    assert len(sim.invocations()) == calls
    assert statuses(engine, alert)["ee"].history[-1].detail["superseded_by"] == str(written[0])


def test_a_superseded_alert_is_not_sent_by_an_operators_replay_either(environment, engine, sim):
    service_id, message_id, alert = failing_alert(engine, sim)
    write_cancel(engine, service_id, message_id)
    with pytest.raises(Superseded):
        send(engine, alert)
    calls = len(sim.invocations())

    with pytest.raises(Superseded):
        send(engine, alert, mode=REPLAY)

    assert len(sim.invocations()) == calls


def test_broadcasts_status_shows_superseded_with_the_cancel_that_superseded_it(environment, engine, sim):
    service_id, message_id, alert = failing_alert(engine, sim)
    cancel = write_cancel(engine, service_id, message_id)
    with pytest.raises(Superseded):
        send(engine, alert)

    with unit_of_work(engine) as session:
        lines = status_lines(event_status(session, alert))

    assert lines[0].startswith("ee: superseded  identifier ")
    assert "superseded" in lines[-1] and f"superseded by cancel {cancel}" in lines[-1]


def test_a_superseded_message_changes_only_to_returned_ack(environment, engine, sim):
    """Only a call's acknowledgement (from a run that lost its lock during the call) is recorded
    over `superseded`: it is the truth about the identifier. Nothing else changes it."""
    service_id, message_id, alert = failing_alert(engine, sim)
    write_cancel(engine, service_id, message_id)
    with pytest.raises(Superseded):
        send(engine, alert)
    with unit_of_work(engine) as session:
        message = dao.get_provider_message(session, alert, "ee")
        for status in ("sending", "returned-error", "technical-failure"):
            assert dao.append_status(session, message, status, detail={"error": "late"}) is None
        assert dao.append_status(session, message, "returned-ack", route="ee-1-proxy") is not None
    assert [h.status for h in statuses(engine, alert)["ee"].history][-2:] == [SUPERSEDED, "returned-ack"]


def test_an_update_written_after_a_cancel_is_refused_not_superseded_by_a_second_cancel(environment, engine, sim):
    service_id, message_id = broadcast(engine)
    start = utcnow()
    alert = make_event(engine, service_id, message_id, sent_at=start)
    assert send(engine, alert).status == "returned-ack"
    first = make_event(engine, service_id, message_id, message_type="cancel", sent_at=start + timedelta(seconds=1))
    assert send(engine, first).status == "returned-ack"
    late = make_event(engine, service_id, message_id, message_type="update", sent_at=start + timedelta(seconds=2))
    second = make_event(engine, service_id, message_id, message_type="cancel", sent_at=start + timedelta(seconds=3))

    with pytest.raises(EarlierEventPending):  # for the update's own run, which refuses it
        send(engine, second)
    with pytest.raises(BroadcastCancelled):
        send(engine, late)
    assert send(engine, second).status == "returned-ack"

    assert statuses(engine, late)["ee"].status == "refused"  # no identifier allocated
    assert references(sim, engine, second) == [str(statuses(engine, e)["ee"].identifier) for e in (alert, first)]

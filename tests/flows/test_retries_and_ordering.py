"""Retries follow the schedule with one identifier; expiry stops them; events go out in order."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import pytest
from sqlalchemy import update as update_rows

from broadcasts.db import unit_of_work
from broadcasts.models import Service, utcnow
from broadcasts.retry import scaled_delays
from tasks.send_to_provider import PROVIDER_BLOCKED_EVENT, PROVIDER_WAITING_EVENT
from tests.broadcasts.test_dao import written_apart
from tests.broadcasts.test_dispatch_records import fail_both_routes
from tests.factories import make_alert, make_event, make_message, make_service
from tests.flows.helpers import (
    calls_for,
    finishes_at,
    in_thread,
    prefect_events,
    provider_message_count,
    run_event,
    statuses,
)
from tests.support.polling import eventually

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.long(45)]
SCALE = 0.1


def _time(call: dict) -> datetime:
    return datetime.fromisoformat(call["received_at"])


def test_every_route_failing_three_times_then_recovering_takes_four_attempts_with_one_identifier(configure, engine, sim):
    configure(ENABLED_CBCS="vodafone", BROADCAST_RETRY_DELAY_SCALE=str(SCALE))
    sim.fault("vodafone-1-proxy", http_status=500, times=6)
    sim.fault("vodafone-2-proxy", function_error="Unhandled", times=6)
    _, _, event_id = make_alert(engine)

    assert run_event(event_id).is_completed()

    status = statuses(engine, event_id)["vodafone"]
    calls = sim.invocations()
    routes = [f"{c['function']}/{c['payload']['cbc_target']}" for c in calls]
    assert routes == ["vodafone-1-proxy/cbc_a", "vodafone-1-proxy/cbc_b", "vodafone-2-proxy/cbc_a",
                      "vodafone-2-proxy/cbc_b"] * 3 + ["vodafone-1-proxy/cbc_a"]
    assert {c["payload"]["identifier"] for c in calls} == {str(status.identifier)}
    assert {c["payload"]["message_number"] for c in calls} == {status.message_number}
    assert provider_message_count(engine, event_id) == 1
    assert status.status == "returned-ack" and status.attempts == 4
    assert [(h.status, h.attempt) for h in status.history] == [
        ("sending", None), ("returned-error", 1), ("returned-error", 2), ("returned-error", 3), ("returned-ack", 4)
    ]
    # The wait before retry n is at least the (scaled) schedule's delay n: 0.1, 0.2, 0.4 s.
    primaries = [_time(c) for c in calls if (c["function"], c["payload"]["cbc_target"]) == ("vodafone-1-proxy", "cbc_a")]
    gaps = [(b - a).total_seconds() for a, b in zip(primaries, primaries[1:])]
    assert all(gap >= delay for gap, delay in zip(gaps, scaled_delays(SCALE))), gaps


def test_both_routes_failing_until_expiry_ends_in_technical_failure_with_no_call_after_expiry(configure, engine, sim):
    configure(ENABLED_CBCS="ee", BROADCAST_RETRY_DELAY_SCALE=str(SCALE))
    sim.fault("ee-1-proxy", http_status=503)
    sim.fault("ee-2-proxy", http_status=503)
    service_id = make_service(engine)
    # 6 s: with 3 s a loaded machine once started the flow's send only after the event expired,
    # which ends it before any call (rightly) instead of while retrying.
    event_id = make_event(engine, service_id, make_message(engine, service_id), expires_in=timedelta(seconds=6))

    state = run_event(event_id)

    assert state.is_failed()
    status = statuses(engine, event_id)["ee"]
    assert status.status == "technical-failure"
    assert "expired while retrying" in status.last_error
    calls = sim.invocations()
    assert len(calls) >= 4
    expiry = finishes_at(engine, event_id)
    late = [c["received_at"] for c in calls if _time(c) > expiry]
    assert late == [], f"calls after the event expired at {expiry.isoformat()}"


@pytest.mark.sqlite
def test_an_update_waits_for_the_alert_ack_on_that_provider_only(configure, engine, sim):
    # The alert fails on ee for about 5 s (8 attempts at a 0.02 scale) while the update is sent.
    configure(ENABLED_CBCS="ee,o2", BROADCAST_RETRY_DELAY_SCALE="0.02")
    sim.fault("ee-1-proxy", http_status=500, times=16)
    sim.fault("ee-2-proxy", http_status=500, times=16)
    service_id = make_service(engine)
    message_id = make_message(engine, service_id)
    alert = make_event(engine, service_id, message_id)
    states = {}
    alert_run = in_thread(lambda: states.setdefault("alert", run_event(alert)))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until the alert is failing on ee
        ee = statuses(engine, alert).get("ee")
        if ee and ee.status == "returned-error":
            break
        time.sleep(0.05)
    update = make_event(engine, service_id, message_id, message_type="update", body="Flood warning: updated")
    states["update"] = run_event(update)
    alert_run.join(60)

    assert states["alert"].is_completed() and states["update"].is_completed(), states
    alert_ee, update_ee = statuses(engine, alert)["ee"], statuses(engine, update)["ee"]
    alert_ack = next(_time(c) for c in calls_for(sim, alert_ee.identifier) if c["outcome"] == "ok")
    update_calls = calls_for(sim, update_ee.identifier)
    assert update_calls and all(_time(c) > alert_ack for c in update_calls), "update reached ee before the alert's ACK"
    o2_update = calls_for(sim, statuses(engine, update)["o2"].identifier)
    assert o2_update and _time(o2_update[0]) < alert_ack, "o2 was held back by ee's failing alert"


def test_an_earlier_technical_failure_blocks_later_events_and_announces_it(configure, engine, sim):
    configure(ENABLED_CBCS="ee")
    since = utcnow()
    service_id = make_service(engine)
    message_id = make_message(engine, service_id)
    alert = make_event(engine, service_id, message_id, finishes_at=utcnow() - timedelta(seconds=1))
    assert run_event(alert).is_failed()  # expired: technical-failure
    update = make_event(engine, service_id, message_id, message_type="update")

    state = run_event(update)

    assert state.is_failed()
    status = statuses(engine, update)["ee"]
    assert status.status == "technical-failure"
    assert str(alert) in status.last_error
    assert "has expired, so replaying it cannot succeed" in status.last_error  # not "replay it"
    assert sim.invocations() == []
    deadline = time.monotonic() + 10  # events reach the server asynchronously
    while not (announced := prefect_events(PROVIDER_BLOCKED_EVENT, since)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [(e["payload"]["event_id"], e["payload"]["provider"]) for e in announced] == [(str(update), "ee")]
    assert announced[0]["payload"]["message"] == status.last_error


@pytest.mark.sqlite
def test_events_sent_in_the_same_second_reach_the_network_in_the_order_they_were_written(configure, engine, sim):
    configure(ENABLED_CBCS="ee")
    service_id = make_service(engine)
    message_id = make_message(engine, service_id)
    start = utcnow()
    alert = make_event(engine, service_id, message_id, sent_at=start)
    assert run_event(alert).is_completed()
    first = make_event(engine, service_id, message_id, message_type="update", sent_at=start + timedelta(seconds=1))
    written_apart()
    second = make_event(engine, service_id, message_id, message_type="update", sent_at=start + timedelta(seconds=1))
    make_event(engine, service_id, message_id, message_type="update", sent_at=start + timedelta(seconds=2))

    states = {}  # `second` is triggered first; the later, unsent update holds neither back
    second_run = in_thread(lambda: states.setdefault("second", run_event(second)))
    waiting = eventually(lambda: (ee := statuses(engine, second).get("ee")) and ee.last_error, 10)
    states["first"] = run_event(first)
    second_run.join(60)

    assert waiting == f"waiting for event {first} (update, not yet acknowledged by ee)"
    assert states["first"].is_completed() and states["second"].is_completed(), states
    identifiers = [c["payload"]["identifier"] for c in sim.invocations()]
    assert identifiers == [str(statuses(engine, e)["ee"].identifier) for e in (alert, first, second)]


def _restricted(engine, service_id, restricted: bool) -> None:  # type: ignore[no-untyped-def]
    with unit_of_work(engine) as session:
        session.execute(update_rows(Service).where(Service.id == service_id).values(restricted=restricted))


def _update_refused_behind_an_acknowledged_alert(engine):  # type: ignore[no-untyped-def]
    """The alert reaches ee; the service is briefly restricted while its update is triggered
    (refused: no provider message); then it is live again."""
    service_id = make_service(engine)
    message_id = make_message(engine, service_id)
    start = utcnow()
    alert = make_event(engine, service_id, message_id, sent_at=start)
    assert run_event(alert).is_completed()
    _restricted(engine, service_id, True)
    refused = make_event(engine, service_id, message_id, message_type="update", sent_at=start + timedelta(seconds=1))
    assert "restricted" in run_event(refused).message
    _restricted(engine, service_id, False)
    return service_id, message_id, start, refused


def test_a_cancel_behind_an_update_refused_while_the_service_was_restricted_is_sent_at_once(configure, engine, sim):
    configure(ENABLED_CBCS="ee")
    service_id, message_id, start, _ = _update_refused_behind_an_acknowledged_alert(engine)
    cancel = make_event(engine, service_id, message_id, message_type="cancel", sent_at=start + timedelta(seconds=2),
                        expires_in=timedelta(seconds=20))  # a wait for the refused update would end here

    state = run_event(cancel)

    assert state.is_completed(), state.message
    ee = statuses(engine, cancel)["ee"]
    assert ee.status == "returned-ack" and [c["payload"]["message_type"] for c in calls_for(sim, ee.identifier)] == [
        "cancel"]


def test_an_update_behind_a_refused_update_is_blocked_and_announced(configure, engine, sim):
    configure(ENABLED_CBCS="ee")
    since = utcnow()
    service_id, message_id, start, refused = _update_refused_behind_an_acknowledged_alert(engine)
    later = make_event(engine, service_id, message_id, message_type="update", sent_at=start + timedelta(seconds=2),
                       expires_in=timedelta(seconds=20))  # a wait for the refused update would end here

    state = run_event(later)

    assert state.is_failed()
    ee = statuses(engine, later)["ee"]
    assert ee.status == "technical-failure" and f"earlier event {refused} was refused" in ee.last_error
    announced = eventually(lambda: prefect_events(PROVIDER_BLOCKED_EVENT, since), 10, every=0.2)
    assert [(e["payload"]["event_id"], e["payload"]["earlier_event_id"]) for e in announced] == [(str(later), str(refused))]


def test_a_send_waiting_longer_than_the_longest_retry_interval_pages_once(configure, engine, sim):
    # Scale 0.01: the longest interval is 2.4 s; the alert fails on ee for about 7 s (11 attempts).
    configure(ENABLED_CBCS="ee", BROADCAST_RETRY_DELAY_SCALE="0.01")
    since = utcnow()
    fail_both_routes(sim, times=11)
    service_id = make_service(engine)
    message_id = make_message(engine, service_id)
    alert = make_event(engine, service_id, message_id)
    states = {}
    alert_run = in_thread(lambda: states.setdefault("alert", run_event(alert)))
    assert eventually(lambda: (ee := statuses(engine, alert).get("ee")) and ee.status == "returned-error", 30)
    waiting = make_event(engine, service_id, message_id, message_type="update")
    states["update"] = run_event(waiting)
    alert_run.join(60)

    assert states["alert"].is_completed() and states["update"].is_completed(), states
    paged = eventually(lambda: prefect_events(PROVIDER_WAITING_EVENT, since), 10, every=0.2)
    time.sleep(1)  # a second page, wrongly emitted, would have arrived by now too
    assert prefect_events(PROVIDER_WAITING_EVENT, since) == paged and len(paged) == 1
    payload = paged[0]["payload"]
    assert (payload["event_id"], payload["provider"], payload["earlier_event_id"]) == (str(waiting), "ee", str(alert))
    assert payload["waited_seconds"] >= 2 and f"see `broadcasts status {alert}`" in payload["message"]
    assert paged[0]["resource"]["prefect.resource.id"] == f"broadcasts.event.{waiting}"
    history = statuses(engine, waiting)["ee"].history
    assert [h.detail.get("paged", False) for h in history if h.detail and "waiting_for" in h.detail] == [False, True]

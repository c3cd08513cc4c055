"""What `broadcasts status` and `send-event` show an operator: failed routes one per line, the
wait and its reason, a refusal said once, never escaped JSON; the broadcast message's status and
its completion on expiry."""

from __future__ import annotations

from datetime import timedelta

import pytest

from broadcasts import dispatch
from broadcasts.cbc_proxy import get_proxy
from broadcasts.db import unit_of_work
from broadcasts.errors import AllRoutesFailed, EarlierEventPending
from broadcasts.expiry import expire_finished_broadcasts
from broadcasts.models import BroadcastMessage, utcnow
from broadcasts.settings import get_settings
from tests.factories import make_event, make_message, make_service


def send(engine, event_id, provider="ee"):  # type: ignore[no-untyped-def]
    settings = get_settings()
    return dispatch.send_once(engine, get_proxy(settings), event_id, provider, headline="h",
                                     enabled=settings.enabled_cbcs)


def test_status_lists_failed_routes_one_per_line_and_the_wait_with_its_reason(cli, engine, sim):
    service_id = make_service(engine)
    message_id = make_message(engine, service_id)
    alert = make_event(engine, service_id, message_id)
    sim.fault("ee-1-proxy", http_status=500, times=2)
    sim.fault("ee-2-proxy", function_error="Unhandled", times=2)
    with pytest.raises(AllRoutesFailed):
        send(engine, alert)
    update = make_event(engine, service_id, message_id, message_type="update")
    with pytest.raises(EarlierEventPending):
        send(engine, update)

    failed = cli("status", str(alert))
    assert failed.exit_code == 0, failed.output
    lines = failed.stdout.splitlines()
    attempt = next(i for i, line in enumerate(lines) if "returned-error  attempt 1" in line)
    assert lines[attempt].endswith("every route failed")
    assert [line.strip().split(":")[0] for line in lines[attempt + 1:attempt + 5]] == [
        "ee-1-proxy/cbc_a", "ee-1-proxy/cbc_b", "ee-2-proxy/cbc_a", "ee-2-proxy/cbc_b"]
    assert lines[attempt + 1].strip().startswith("ee-1-proxy/cbc_a: HTTP 500")
    assert lines[attempt + 3].strip().startswith("ee-2-proxy/cbc_a: FunctionError Unhandled")
    assert '"failed_routes"' not in failed.stdout and '\\"' not in failed.stdout  # no JSON detail, no escapes

    waiting = cli("status", str(update)).stdout
    assert f"sending  waiting for event {alert} (alert, not yet acknowledged by ee)" in waiting


def test_a_refused_send_prints_the_table_with_the_reason_once(cli, configure, engine, sim, prefect_server):
    configure(ENABLED_CBCS="ee,three,o2,vodafone")
    service_id = make_service(engine)
    event_id = make_event(engine, service_id, make_message(engine, service_id, stubbed=True))

    result = cli("send-event", str(event_id))

    assert result.exit_code == 1
    reason = f"event {event_id} belongs to a stubbed broadcast message; nothing is sent"
    assert result.stdout.count(reason) == 2, result.stdout  # the run's message and the table's "why"
    assert result.stdout.splitlines()[0] == (
        f"Failed: event {event_id} not acknowledged by ee, three, o2, vodafone (refused: {reason})")
    assert result.stdout.splitlines()[-1] == f"  why: {reason}"
    assert sim.invocations() == []


def test_status_shows_the_broadcast_message_and_its_completion_on_expiry(cli, engine):
    service_id = make_service(engine)
    message_id = make_message(engine, service_id)
    event_id = make_event(engine, service_id, message_id)
    before = cli("status", str(event_id))
    assert before.exit_code == 0, before.output
    finishes_at = read_finishes_at(engine, message_id)
    assert before.stdout.splitlines() == [
        f"broadcast message {message_id}: broadcasting  finishes at {finishes_at.isoformat(timespec='milliseconds')}",
        f"event {event_id}: nothing sent yet",
    ]

    finished = utcnow() - timedelta(seconds=1)
    with unit_of_work(engine) as session:
        session.get_one(BroadcastMessage, message_id).finishes_at = finished
    now = utcnow()
    assert [e.broadcast_message_id for e in expire_finished_broadcasts(engine, now)
            if e.broadcast_message_id == message_id] == [message_id]

    after = cli("status", str(event_id)).stdout.splitlines()
    shown = finished.isoformat(timespec="milliseconds")
    assert after[:2] == [
        f"broadcast message {message_id}: completed  finishes at {shown}",
        f"    {now.isoformat(timespec='milliseconds')}  completed  expired: finishes_at {shown} passed",
    ]


def read_finishes_at(engine, message_id):  # type: ignore[no-untyped-def]
    with unit_of_work(engine) as session:
        return session.get_one(BroadcastMessage, message_id).finishes_at


def test_send_event_of_an_alert_superseded_on_one_network_completes_with_exit_code_0(cli, engine, sim, prefect_server):
    service_id = make_service(engine)
    message_id = make_message(engine, service_id)
    alert = make_event(engine, service_id, message_id)
    sim.fault("ee-1-proxy", http_status=500, times=2)  # one attempt: four routes
    sim.fault("ee-2-proxy", http_status=500, times=2)
    with pytest.raises(AllRoutesFailed):
        send(engine, alert)
    send(engine, alert, "vodafone")  # acknowledged before the cancel is written
    cancel = make_event(engine, service_id, message_id, message_type="cancel")

    result = cli("send-event", str(alert))

    assert result.exit_code == 0, result.stdout  # superseded is finished, not failed
    first, *table = result.stdout.splitlines()
    assert first.startswith(f"Completed: event {alert} acknowledged by vodafone; ee superseded by cancel {cancel}")
    assert any(line.split()[:2] == ["ee", "superseded"] for line in table), table
    assert any(line.startswith("ee: superseded  identifier ") for line in cli("status", str(alert)).stdout.splitlines())

"""Operator alerts: bootstrap creates the automations idempotently, and a blocked event, a failed
send run, a send run claimed but never started and a send run marked Late reach a generic webhook
notification block pointed at a local receiver, naming the event, the provider and what to do."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.states import Late, Pending, Running, Scheduled, State

from broadcasts.models import utcnow
from deployments.automations import PREFIX
from deployments.bootstrap import bootstrap
from tests.factories import make_event, make_message, make_service
from flows.send_broadcast_event import send_broadcast_event
from tests.flows.helpers import run_event

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.long(45)]


@pytest.fixture
def receiver() -> Iterator[list[dict]]:
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    CustomWebhookNotificationBlock(
        name="on-call", url=f"http://127.0.0.1:{server.server_port}/page",
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
    ).save("on-call", overwrite=True)
    yield received
    server.shutdown()


@pytest.fixture
def send_run() -> Iterator[Callable[..., str]]:
    """Makes a send-broadcast-event run that no process runs, taken through the states given as a
    claimant or the server's late-runs service sets them, and returns its name; deletes them after."""
    made: list[uuid.UUID] = []

    def make(*states: State) -> str:
        name = f"send-broadcast-event-{uuid.uuid4()}"
        with get_client(sync_client=True) as client:
            run = client.create_flow_run(send_broadcast_event, name=name, state=Scheduled(),
                                         parameters={"broadcast_event_id": event_id(name)})
            made.append(run.id)
            for state in states:
                assert client.set_flow_run_state(run.id, state).status.value == "ACCEPT", state
        return name

    yield make
    with get_client(sync_client=True) as client:
        for run_id in made:
            client.delete_flow_run(run_id)


def event_id(run_name: str) -> str:
    return run_name.removeprefix("send-broadcast-event-")


def wait_for(received: list[dict], text: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in received:
            if text in message["subject"] + message["body"]:
                return message
        time.sleep(0.5)
    pytest.fail(f"no notification mentioning {text!r}; received {received}")


def test_without_a_notification_block_bootstrap_says_alerts_are_off():
    steps = [str(s) for s in bootstrap()]
    assert any("operator alerts are off: set ALERT_NOTIFICATION_BLOCK" in s for s in steps)
    assert any(f"automation '{PREFIX}mark runs without heartbeats crashed'" in s for s in steps)


def test_a_blocked_event_and_its_failed_run_page_the_operator_with_what_to_do(configure, engine, sim, receiver):
    first = bootstrap("custom-webhook/on-call")
    again = bootstrap("custom-webhook/on-call")
    automations = [s.what for s in first if s.what.startswith("automation")]
    assert len(automations) == 9 and not any(s.created for s in again)

    configure(ENABLED_CBCS="ee")
    service_id = make_service(engine)
    message_id = make_message(engine, service_id)
    alert = make_event(engine, service_id, message_id, finishes_at=utcnow() - timedelta(seconds=1))
    assert run_event(alert).is_failed()  # expired: technical-failure
    update = make_event(engine, service_id, message_id, message_type="update")
    assert run_event(update).is_failed()

    blocked = wait_for(receiver, f"Broadcast event {update} blocked for ee")
    assert f"earlier event {alert} ended technical-failure" in blocked["body"]
    assert "ask ee whether it holds" in blocked["body"]
    failed = wait_for(receiver, f"send-broadcast-event-{update}")
    assert "Failed" in failed["subject"] and f"broadcasts status {update}" in failed["body"]


def test_a_send_run_claimed_but_never_started_and_one_marked_late_page_the_operator(receiver, send_run):
    bootstrap("custom-webhook/on-call")
    started = send_run(Pending(), Running())
    stuck = send_run(Pending())  # its claimant died before the run started
    late = send_run(Late(scheduled_time=utcnow() - timedelta(seconds=20)))

    page = wait_for(receiver, f"Broadcast send late: {late}")
    assert "no process has claimed it" in page["body"] and f"broadcasts send-event {event_id(late)}" in page["body"]
    page = wait_for(receiver, f"Broadcast send not started: {stuck}", timeout=90)
    assert "was claimed (Pending) and has neither started nor ended 30 s later" in page["body"]
    assert f"broadcasts send-event {event_id(stuck)}" in page["body"]
    time.sleep(6)  # the started run's 30 s ended first: its page, if any, would be in by now
    assert not [m for m in receiver if started in m["subject"] + m["body"]], receiver

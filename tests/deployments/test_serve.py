"""`broadcasts serve` against a real Prefect server: it serves the deployments, two of them never
send one (event, provider) twice, and it stops on SIGTERM leaving nothing behind."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from datetime import datetime

import pytest

from broadcasts.models import utcnow
from deployments.trigger import post_event
from tests.conftest import backend
from tests.deployments.serving import serving, start_run, wait_for_runs
from tests.factories import make_alert
from tests.flows.helpers import statuses
from tests.support.processes import free_port

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.long(70)]


def test_serve_says_what_it_uses_serves_the_deployments_and_stops_on_sigterm(environment, engine, sim):
    with serving() as served:
        text = served.text()
        for expected in ("Prefect API: http://127.0.0.1:", "database: ", f"CBC proxies: {environment['CBC_PROXY_ENDPOINT_URL']}",
                         "PREFECT_RUNNER_POLL_FREQUENCY=1", "work pool broadcasts", "send-broadcast-event/send-broadcast-event"):
            assert expected in text, text
        _, _, event_id = make_alert(engine)
        run_id = start_run(event_id)
        assert wait_for_runs([run_id], 60) == {run_id: "COMPLETED"}, served.text()
        assert {s.status for s in statuses(engine, event_id).values()} == {"returned-ack"}

        served.process.send_signal(signal.SIGTERM)
        served.process.wait(30)
        time.sleep(0.5)
        with pytest.raises(ProcessLookupError):  # nothing left in its process group
            os.killpg(served.process.pid, 0)


def test_an_event_posted_to_the_webhook_of_serve_reaches_all_four_providers(environment, engine, sim, monkeypatch):
    secret = "s" * 32
    monkeypatch.setenv("WEBHOOK_SECRET", secret)
    port = free_port()
    with serving("--webhook-port", str(port), webhook=True) as served:
        assert f"webhook: http://127.0.0.1:{port}/broadcast-events" in served.text()
        _, _, event_id = make_alert(engine)
        status, answer = post_event(f"http://127.0.0.1:{port}", event_id, secret)
        accepted = utcnow()
        assert status == 202, answer
        assert wait_for_runs([answer["flow_run_id"]], 60) == {answer["flow_run_id"]: "COMPLETED"}, served.text()
    calls = sim.invocations()
    assert sorted(c["function"] for c in calls) == ["ee-1-proxy", "o2-1-proxy", "three-1-proxy", "vodafone-1-proxy"]
    fourth = max(datetime.fromisoformat(c["received_at"]) for c in calls)
    print(f"\nwebhook 202 -> 4th provider call: {(fourth - accepted).total_seconds():.2f} s (serve and its warm dispatcher)")


@pytest.mark.skipif(backend() != "postgresql", reason="the several-machine topology runs on PostgreSQL: "
                    "this test runs in the PostgreSQL pass of `make test`")
def test_two_serve_processes_send_each_event_to_each_provider_exactly_once(environment, engine, sim):
    """Each (event, network) has one identifier, acknowledged, and every call made for it is in
    its record: the acknowledged one, plus any route that failed first (on a loaded machine a
    route can time out on the client after the simulator took the call, and the same payload then
    goes to the next route, as failover must)."""
    with serving(), serving():
        events = [make_alert(engine)[2] for _ in range(20)]
        runs = [start_run(e) for e in events]
        states = wait_for_runs(runs, 180)
    assert Counter(states.values()) == Counter({"COMPLETED": 20})
    invocations = sim.invocations()
    calls = Counter(c["payload"]["identifier"] for c in invocations)
    identifiers = {e: statuses(engine, e) for e in events}
    for event_id, found in identifiers.items():
        assert {p: s.status for p, s in found.items()} == dict.fromkeys(["ee", "three", "o2", "vodafone"], "returned-ack")
        for provider, status in found.items():
            recorded = 1 + sum(len((row.detail or {}).get("failed_routes") or []) for row in status.history)
            assert calls[str(status.identifier)] == recorded, (
                f"{provider} of {event_id} was called {calls[str(status.identifier)]} times; its record "
                f"accounts for {recorded}: {[(row.status, row.detail) for row in status.history]}; the calls: "
                f"{[(c['function'], c['payload'].get('cbc_target'), c['received_at'], c.get('responded_at'), c['outcome']) for c in invocations if c['payload']['identifier'] == str(status.identifier)]}")
    assert sum(calls.values()) == sum(calls[str(s.identifier)] for found in identifiers.values() for s in found.values())

"""The warm dispatcher against the real test Prefect server: each claim rule of
deployments/dispatcher.py, a run's life as a normal deployment run, and the command's shutdown.
A lost claim reply, a Cancel and how many runs it takes have files of their own
(test_dispatcher_claim.py, test_dispatcher_cancel.py, test_dispatcher_capacity.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
from prefect.client.schemas.responses import SetStateStatus
from prefect.states import AwaitingRetry, Pending, Scheduled

from flows.send_broadcast_event import DEPLOYMENT_NAME as SEND_EVENT_DEPLOYMENT
from deployments.dispatcher import RUN_NAMES, WARM_FLOWS, dispatching
from deployments.definitions import register_warm_deployments
from tests.conftest import PROJECT_ROOT, backend
from tests.deployments.serving import BROADCASTS, start_run, wait_for_runs
from tests.factories import make_alert
from tests.flows.helpers import calls_for, prefect_events, statuses
from tests.support.polling import eventually

pytestmark = [pytest.mark.usefixtures("prefect_server", "alert_deployments"), pytest.mark.long(35)]
PROVIDERS = ["ee", "three", "o2", "vodafone"]


@pytest.fixture(scope="module")
def alert_deployments(prefect_server):  # type: ignore[no-untyped-def]
    register_warm_deployments()


def states_of(run_ids: list[str]) -> dict[str, str]:
    with get_client(sync_client=True) as client:
        return {run_id: client.read_flow_run(run_id).state.type.value for run_id in run_ids}


def read_logs(run_id):  # type: ignore[no-untyped-def]
    with get_client(sync_client=True) as client:
        return client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))


def assert_each_provider_called_once(engine, sim, events) -> None:  # type: ignore[no-untyped-def]
    calls = Counter(c["payload"]["identifier"] for c in sim.invocations())
    for event_id in events:
        found = statuses(engine, event_id)
        assert {p: s.status for p, s in found.items()} == dict.fromkeys(PROVIDERS, "returned-ack")
        for provider, status in found.items():
            assert calls[str(status.identifier)] == 1, f"{provider} of {event_id}: {calls[str(status.identifier)]} calls"
    assert sum(calls.values()) == 4 * len(events)


def test_a_run_created_from_the_deployment_runs_at_once_with_its_task_runs_logs_and_heartbeat(environment, engine, sim):
    _, _, event_id = make_alert(engine)
    since = datetime.now(timezone.utc)
    with dispatching():
        created = datetime.now(timezone.utc)
        run_id = start_run(event_id)
        assert wait_for_runs([run_id], 20) == {run_id: "COMPLETED"}
    fourth = max(datetime.fromisoformat(c["received_at"]) for c in sim.invocations())
    seconds = (fourth - created).total_seconds()
    print(f"\ncreate_flow_run -> 4th provider call: {seconds:.2f} s (warm dispatcher)")
    assert_each_provider_called_once(engine, sim, [event_id])
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        deployment = client.read_deployment_by_name(SEND_EVENT_DEPLOYMENT)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
        history = [s.type.value for s in client.read_flow_run_states(run_id)]
    assert run.deployment_id == deployment.id and run.name == f"send-broadcast-event-{event_id}"
    assert sorted(t.name.split(" ")[1] for t in tasks if t.name.startswith("send ")) == sorted(PROVIDERS)
    assert all(t.state.is_completed() for t in tasks)
    # Logs go to the API in batches, every couple of seconds.
    assert eventually(lambda: read_logs(run.id), 10, every=0.5), "the run's logs reached the API"
    assert history == ["SCHEDULED", "PENDING", "RUNNING", "COMPLETED"]
    # The heartbeat is what lets the zombie-run automation recover a run of a killed dispatcher.
    assert eventually(lambda: any(e["resource"]["prefect.resource.id"] == f"prefect.flow-run.{run_id}"
                                  for e in prefect_events("prefect.flow-run.heartbeat", since)), 5, every=0.5)


@pytest.mark.skipif(backend() != "postgresql", reason="the several-machine topology runs on PostgreSQL: "
                    "this test runs in the PostgreSQL pass of `make test`")
def test_two_dispatchers_run_each_of_several_runs_exactly_once(environment, engine, sim):
    events = [make_alert(engine)[2] for _ in range(6)]
    with dispatching(), dispatching():
        runs = [start_run(e) for e in events]
        assert set(wait_for_runs(runs, 60).values()) == {"COMPLETED"}
    assert_each_provider_called_once(engine, sim, events)
    with get_client(sync_client=True) as client:
        for run_id in runs:  # one claim, one execution: no second Pending or Running
            history = [s.type.value for s in client.read_flow_run_states(run_id)]
            assert history == ["SCHEDULED", "PENDING", "RUNNING", "COMPLETED"], history


def test_a_replayed_event_of_a_completed_run_is_not_run_again(environment, engine, sim):
    _, _, event_id = make_alert(engine)
    with dispatching():
        run_id = start_run(event_id)
        assert wait_for_runs([run_id], 20) == {run_id: "COMPLETED"}
    sim.reset()
    # A new subscriber replays the last minute of events, this run's Scheduled event among them.
    with dispatching() as dispatcher:
        dispatcher.offer(uuid.UUID(run_id))  # as a replayed event (or a late poll) would
        time.sleep(1.5)
    assert sim.invocations() == [] and states_of([run_id]) == {run_id: "COMPLETED"}
    with get_client(sync_client=True) as client:  # and the persisted result makes the server refuse it
        assert client.set_flow_run_state(run_id, Pending()).status == SetStateStatus.REJECT


def test_a_run_scheduled_for_later_is_claimed_only_when_it_is_due(environment, engine, sim):
    _, _, event_id = make_alert(engine)
    with dispatching(), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(SEND_EVENT_DEPLOYMENT)
        due = datetime.now(timezone.utc) + timedelta(seconds=2)  # after the warm-up, however slow
        run_id = str(client.create_flow_run_from_deployment(
            deployment.id, parameters={"broadcast_event_id": str(event_id)}, state=Scheduled(scheduled_time=due)).id)
        time.sleep(1.2)  # its event has arrived, and a poll has run
        assert states_of([run_id]) == {run_id: "SCHEDULED"} and sim.invocations() == []
        assert wait_for_runs([run_id], 20) == {run_id: "COMPLETED"}
    first_call = min(datetime.fromisoformat(c["received_at"]) for c in sim.invocations())
    assert first_call >= due


def test_a_retry_from_the_ui_is_picked_up_within_a_couple_of_seconds(environment, engine, sim):
    missing_event = uuid.uuid4()  # the run fails: nothing to send
    with dispatching():
        run_id = start_run(missing_event)
        assert wait_for_runs([run_id], 20) == {run_id: "FAILED"}
        with get_client(sync_client=True) as client:
            assert client.set_flow_run_state(run_id, AwaitingRetry()).status == SetStateStatus.ACCEPT
            retried = time.monotonic()
            assert eventually(lambda: client.read_flow_run(run_id).run_count == 2, 5), "not picked up"
            print(f"\nAwaitingRetry -> running again: {time.monotonic() - retried:.2f} s")
        assert wait_for_runs([run_id], 20) == {run_id: "FAILED"}


def test_a_provider_failing_on_both_routes_is_retried_with_the_same_identifier(configure, environment, engine, sim):
    sim.fault("ee-1-proxy", http_status=500, times=2)
    sim.fault("ee-2-proxy", http_status=500, times=2)
    _, _, event_id = make_alert(engine)
    with dispatching():
        run_id = start_run(event_id)
        assert wait_for_runs([run_id], 30) == {run_id: "COMPLETED"}
    ee = statuses(engine, event_id)["ee"]
    assert ee.status == "returned-ack" and ee.attempts == 2
    assert [c["function"] for c in calls_for(sim, ee.identifier)] == [
        "ee-1-proxy", "ee-1-proxy", "ee-2-proxy", "ee-2-proxy", "ee-1-proxy"]  # four routes, then the retry


def test_stopping_finishes_the_claimed_runs_and_leaves_the_rest_scheduled(environment, engine, sim):
    events = [make_alert(engine)[2] for _ in range(4)]
    with dispatching(max_runs=1):
        runs = [start_run(e) for e in events]
        assert eventually(lambda: "RUNNING" in states_of(runs).values(), 10)
    found = Counter(states_of(runs).values())
    assert set(found) <= {"COMPLETED", "SCHEDULED"} and found["COMPLETED"] >= 1, found
    with dispatching():  # the ones left are taken by the next dispatcher
        assert set(wait_for_runs(runs, 30).values()) == {"COMPLETED"}
    assert_each_provider_called_once(engine, sim, events)


def test_the_dispatcher_command_runs_alerts_and_drains_on_sigterm(environment, engine, sim):
    process = subprocess.Popen([*BROADCASTS, "dispatcher"], cwd=PROJECT_ROOT, env=os.environ.copy(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    output: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in process.stdout:  # type: ignore[union-attr]
            output.append(line)
            if line.startswith("dispatching:"):
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    text = lambda: "".join(output)  # noqa: E731
    try:
        assert ready.wait(60) and process.poll() is None, text()
        assert "send-broadcast-event/send-broadcast-event" in text()
        _, _, event_id = make_alert(engine)
        run_id = start_run(event_id)
        assert eventually(lambda: len(sim.invocations()) >= 1, 10), text()
        process.send_signal(signal.SIGTERM)  # while the run is under way: it is finished, not dropped
        assert process.wait(30) == 0, text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    assert states_of([run_id]) == {run_id: "COMPLETED"}
    assert_each_provider_called_once(engine, sim, [event_id])


def test_the_dispatcher_runs_the_alert_flows_without_a_run_name_template_and_names_a_run_made_without_one():
    """The engine renames a run with its flow's template just before it starts: an API call on
    the way to the networks, which the dispatcher leaves out (its runs come named, or it names
    them in the background: the test above starts its run without a name)."""
    assert all(warm_flow.flow_run_name is None for warm_flow in WARM_FLOWS.values())
    assert RUN_NAMES == {"send-broadcast-event": "send-broadcast-event-{broadcast_event_id}",
                         "send-provider-message": "send-provider-message-{provider}-{broadcast_event_id}"}

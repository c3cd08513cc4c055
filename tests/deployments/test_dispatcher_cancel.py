"""A Cancel from the Prefect UI against the warm dispatcher, on the real test Prefect server and the
simulator: the run stops at its next retry, its provider message ends technical-failure with the
reason, and nothing sends it again (tasks/run_cancel.py, deployments/dispatcher.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId
from prefect.client.schemas.responses import SetStateStatus
from prefect.states import Cancelling

from broadcasts.db import unit_of_work
from broadcasts.models import utcnow
from broadcasts.resume import events_to_dispatch
from flows.send_broadcast_event import DEPLOYMENT_NAME as SEND_EVENT_DEPLOYMENT
from deployments.dispatcher import dispatching
from deployments.definitions import register_warm_deployments
from tests.deployments.serving import start_run, wait_for_runs
from tests.factories import make_alert, make_event, make_message, make_service
from tests.flows.helpers import calls_for, statuses
from tests.support.polling import eventually

pytestmark = pytest.mark.usefixtures("prefect_server", "alert_deployments")


@pytest.fixture(scope="module")
def alert_deployments(prefect_server):  # type: ignore[no-untyped-def]
    register_warm_deployments()


def runs_for(event_id: object) -> list[str]:
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(SEND_EVENT_DEPLOYMENT)
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id])), limit=200)
    return [str(r.id) for r in runs if r.parameters.get("broadcast_event_id") == str(event_id)]


@pytest.mark.sqlite
def test_a_cancel_stops_a_run_retrying_a_dead_network_at_its_next_retry_and_nothing_sends_it_again(
        configure, environment, engine, sim):
    configure(ENABLED_CBCS="ee,o2", BROADCAST_RETRY_DELAY_SCALE="0.1")  # waits 0.1, 0.2 … 1.6, 3.2 s
    sim.fault("ee-1-proxy", http_status=500, times=1000)
    sim.fault("ee-2-proxy", http_status=500, times=1000)
    service_id = make_service(engine)
    event_id = make_event(engine, service_id, make_message(engine, service_id), expires_in=timedelta(seconds=60))
    # One thread: a run that kept it after the cancel would keep the next alert from starting.
    with dispatching(max_runs=1, max_held=1), get_client(sync_client=True) as client:
        run_id = start_run(event_id)
        assert eventually(lambda: len(sim.invocations("ee-2-proxy")) >= 5, 30), "ee was not retried"
        at_cancel = len(sim.invocations("ee-2-proxy"))  # the next wait is 1.6 s or more
        assert client.set_flow_run_state(run_id, Cancelling()).status == SetStateStatus.ACCEPT  # the UI's Cancel

        ee = eventually(lambda: (s := statuses(engine, event_id)["ee"]).status == "technical-failure" and s, 10)
        assert ee, f"ee did not stop: {statuses(engine, event_id)['ee']}"
        assert len(sim.invocations("ee-2-proxy")) - at_cancel <= 1, "retried after the cancel"
        assert ee.last_error == (f"event {event_id} to ee stopped: run {run_id} was cancelled by an operator; "
                                 f"replay with `broadcasts replay {event_id} ee`")
        assert wait_for_runs([run_id], 10) == {run_id: "CANCELLED"}
        assert "cancelled by an operator" in client.read_flow_run(run_id).state.message
        assert statuses(engine, event_id)["o2"].status == "returned-ack"

        sim.reset()  # the network is back: a send still under way would now be acknowledged
        _, _, next_alert = make_alert(engine)
        next_run = start_run(next_alert)
        assert wait_for_runs([next_run], 20) == {next_run: "COMPLETED"}, "the cancelled run kept its thread"
        assert calls_for(sim, ee.identifier) == []
    with unit_of_work(engine) as session:  # resume-dispatch would not start the event again
        unfinished = events_to_dispatch(session, utcnow(), timedelta(0), ["ee", "o2"])
    assert event_id not in {event.event_id for event in unfinished}
    assert runs_for(event_id) == [run_id]
    assert statuses(engine, event_id)["ee"].status == "technical-failure" and calls_for(sim, ee.identifier) == []

"""How many runs the warm dispatcher takes, against the real test Prefect server and the simulator:
runs retrying a dead network do not keep a new alert from starting, and a run offered while no
thread is free is left Scheduled until one frees (deployments/dispatcher.py)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from prefect.client.orchestration import get_client
from prefect.states import Cancelling

from deployments.dispatcher import dispatching
from deployments.definitions import register_warm_deployments
from tests.deployments.serving import start_run, wait_for_runs
from tests.factories import make_event, make_message, make_service
from tests.flows.helpers import statuses
from tests.support.polling import eventually

pytestmark = pytest.mark.usefixtures("prefect_server", "alert_deployments")


@pytest.fixture(scope="module")
def alert_deployments(prefect_server):  # type: ignore[no-untyped-def]
    register_warm_deployments()


@pytest.fixture
def dead_ee(configure, environment, sim):  # type: ignore[no-untyped-def]
    """EE down on both routes; runs retry it 0.1, 0.2 … s apart."""
    configure(ENABLED_CBCS="ee,o2", BROADCAST_RETRY_DELAY_SCALE="0.1")
    sim.fault("ee-1-proxy", http_status=500, times=10000)
    sim.fault("ee-2-proxy", http_status=500, times=10000)


def alert_to(engine, provider: str, expires_in: timedelta = timedelta(minutes=5)):  # type: ignore[no-untyped-def]
    service_id = make_service(engine, providers=[provider])
    return make_event(engine, service_id, make_message(engine, service_id), expires_in=expires_in)


def state_of(run_id: str) -> str:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id).state.type.value


def retrying(engine, event_id) -> bool:  # type: ignore[no-untyped-def]
    found = statuses(engine, event_id).get("ee")
    return found is not None and found.status == "returned-error" and found.attempts >= 2


def cancel(run_ids: list[str]) -> None:
    """As the UI's Cancel: each run stops at its next retry (so the dispatcher drains at once)."""
    with get_client(sync_client=True) as client:
        for run_id in run_ids:
            client.set_flow_run_state(run_id, Cancelling())


@pytest.mark.sqlite
def test_runs_retrying_a_dead_network_do_not_keep_a_new_alert_from_starting(dead_ee, engine, sim):
    stuck = [alert_to(engine, "ee", expires_in=timedelta(seconds=40)) for _ in range(2)]
    with dispatching(max_runs=2, start_seconds=1):
        stuck_runs = [start_run(event_id) for event_id in stuck]
        try:
            assert eventually(lambda: all(retrying(engine, e) for e in stuck), 20), "ee was not retried"
            new_alert = alert_to(engine, "o2")
            new_run = start_run(new_alert)
            assert wait_for_runs([new_run], 10) == {new_run: "COMPLETED"}, "the new alert waited behind them"
            assert statuses(engine, new_alert)["o2"].status == "returned-ack"
            assert all(state_of(run_id) == "RUNNING" for run_id in stuck_runs)  # still retrying ee
        finally:
            cancel(stuck_runs)


def test_a_run_offered_while_no_thread_is_free_stays_scheduled_and_is_claimed_once_one_frees(dead_ee, engine, sim):
    with dispatching(max_runs=1, max_held=1):
        stuck_event = alert_to(engine, "ee", expires_in=timedelta(seconds=40))
        stuck_run = start_run(stuck_event)
        try:
            assert eventually(lambda: retrying(engine, stuck_event), 20), "ee was not retried"
            waiting = start_run(alert_to(engine, "o2"))
            time.sleep(2.5)  # its event has arrived and two polls have offered it
            assert state_of(waiting) == "SCHEDULED"
        finally:
            cancel([stuck_run])
        assert wait_for_runs([stuck_run], 10) == {stuck_run: "CANCELLED"}
        assert wait_for_runs([waiting], 10) == {waiting: "COMPLETED"}

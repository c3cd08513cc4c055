"""expire-broadcasts against the real Prefect server and the simulator: a broadcasting message past
its `finishes_at` is completed, with its history row, the run's artifact and no proxy call; served
by `broadcasts serve` on its schedule, within two intervals of its finish time. (The interval's
default, every minute, and the served schedule following EXPIRY_INTERVAL_SECONDS are checked in
tests/deployments/test_prefect_yaml.py; here it is 20 s, so the test waits seconds, not minutes.)"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta

import pytest
from prefect.artifacts import Artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import FlowRunSort
from sqlalchemy import Engine, update

from broadcasts import dao
from broadcasts.db import unit_of_work
from broadcasts.models import BroadcastMessage, utcnow
from flows.expire_broadcasts import ARTIFACT_KEY, FLOW_NAME, expire_broadcasts
from tests.deployments.serving import serving
from tests.factories import make_message, make_service
from tests.support.polling import wait_until

pytestmark = pytest.mark.usefixtures("prefect_server")
DEPLOYMENT = f"{FLOW_NAME}/{FLOW_NAME}"
INTERVAL_SECONDS = 20  # each served run is a new process: much shorter crowds a 2-core machine


def broadcasting_until(engine: Engine, finishes_at: datetime) -> uuid.UUID:
    message_id = make_message(engine, make_service(engine))
    with unit_of_work(engine) as session:
        session.execute(update(BroadcastMessage).where(BroadcastMessage.id == message_id)
                        .values(finishes_at=finishes_at))
    return message_id


def read(engine: Engine, message_id: uuid.UUID) -> tuple[str, list[tuple[str, str, datetime]]]:
    with unit_of_work(engine) as session:
        status = session.get_one(BroadcastMessage, message_id).status
        return status, [(h.status, h.reason, h.created_at) for h in dao.message_history(session, message_id)]


def expiry_runs(deployment_id: uuid.UUID) -> list[FlowRun]:
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id])),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=50)
    return list(runs)


@pytest.mark.sqlite
def test_a_run_completes_a_finished_broadcast_with_its_artifact_and_no_proxy_call(engine, sim):
    finished = utcnow() - timedelta(seconds=1)
    message_id = broadcasting_until(engine, finished)
    later = broadcasting_until(engine, utcnow() + timedelta(hours=1))

    state = expire_broadcasts(return_state=True)

    assert state.is_completed() and state.message.startswith("completed ")
    status, history = read(engine, message_id)
    assert status == "completed"
    [(_, reason, _)] = history
    assert reason == f"expired: finishes_at {finished.isoformat(timespec='milliseconds')} passed"
    assert read(engine, later) == ("broadcasting", [])
    artifact = Artifact.get(ARTIFACT_KEY)
    assert artifact is not None and artifact.flow_run_id == state.state_details.flow_run_id
    rows = json.loads(artifact.data)
    assert [r["finishes_at"] for r in rows if r["broadcast_message_id"] == str(message_id)] == [finished.isoformat()]
    assert sim.invocations() == []

    again = expire_broadcasts(return_state=True)
    assert again.is_completed() and read(engine, message_id)[1] == history  # completed once


def test_with_dispatch_disabled_nothing_is_completed(configure, engine):
    configure(CBC_PROXY_ENABLED="false")
    message_id = broadcasting_until(engine, utcnow() - timedelta(seconds=1))

    state = expire_broadcasts(return_state=True)

    assert state.is_completed() and state.message == "dispatch disabled: nothing completed"
    assert read(engine, message_id) == ("broadcasting", [])


def test_serve_runs_it_on_its_schedule_and_completes_a_broadcast_within_two_intervals_of_its_finish(
        engine, sim, monkeypatch):
    monkeypatch.setenv("EXPIRY_INTERVAL_SECONDS", str(INTERVAL_SECONDS))
    interval = timedelta(seconds=INTERVAL_SECONDS)
    finishes_at = utcnow() + timedelta(seconds=2)
    message_id = broadcasting_until(engine, finishes_at)
    with serving() as served, get_client(sync_client=True) as client:
        assert DEPLOYMENT in served.text()
        deployment = client.read_deployment_by_name(DEPLOYMENT)
        try:
            [schedule] = deployment.schedules
            assert schedule.active and schedule.schedule.interval == interval
            # What the server's scheduler does for every deployment (the test server runs without it).
            client.request("POST", f"/deployments/{deployment.id}/schedule",
                           json={"min_runs": 3, "max_runs": 3, "min_time": 0})
            starts = [run.expected_start_time for run in expiry_runs(deployment.id)]
            assert [later - earlier for earlier, later in zip(starts, starts[1:])] == [interval] * 2

            wait_until(lambda: read(engine, message_id)[0] == "completed", 2 * INTERVAL_SECONDS + 60,
                       "the served expire-broadcasts to complete the message", every=1)
            [(_, reason, completed_at)] = read(engine, message_id)[1]
            waited = (completed_at - finishes_at).total_seconds()
            print(f"\nfinishes_at -> completed by the served deployment: {waited:.1f} s")
            assert 0 < waited < 2 * INTERVAL_SECONDS, served.text()
            assert reason.startswith("expired: finishes_at ")
            # The run reports its final state just after its transaction commits.
            done = wait_until(lambda: [run for run in expiry_runs(deployment.id)
                                       if run.state is not None and run.state.is_final()], 30,
                              "the expire-broadcasts run to report its final state", every=0.5)
            assert [run.state.type.value for run in done] == ["COMPLETED"]
            assert sim.invocations() == []
        finally:  # no later `serve` of another test runs this test's schedule
            for run in expiry_runs(deployment.id):
                if run.state is not None and run.state.is_scheduled():
                    client.delete_flow_run(run.id)

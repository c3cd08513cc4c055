"""What the Prefect UI's "Retry" of a failed send-broadcast-event run and a "Custom run" do, through
the same client calls the UI makes, with `serve` running. A Retry is automatic: it sends nothing
to a provider that ended technical-failure. A Custom run of send-provider-message, or of
send-broadcast-event with `replay_failed`, replays it; either way only the providers that have not
acknowledged are sent to, with the identifiers they already have."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from prefect.client.orchestration import get_client
from prefect.states import AwaitingRetry
from sqlalchemy import delete, insert, select

from broadcasts.db import unit_of_work
from broadcasts.models import BroadcastProviderMessageNumber, utcnow
from flows.send_broadcast_event import DEPLOYMENT_NAME as SEND_EVENT_DEPLOYMENT
from flows.send_provider_message import DEPLOYMENT_NAME as SEND_PROVIDER_DEPLOYMENT
from tests.deployments.serving import serving, start_run, wait_for_runs
from tests.factories import make_event, make_message, make_service
from tests.flows.helpers import calls_for, statuses

pytestmark = pytest.mark.usefixtures("prefect_server")


def update_failing_on_vodafone(engine, sim):  # type: ignore[no-untyped-def]
    """An alert acknowledged by all four; then its Vodafone number row goes missing (a bad row
    from another writer), so the update cannot be built for Vodafone alone: its run fails with
    three providers acknowledged. Returns (update id, a function that repairs the row)."""
    service_id = make_service(engine)
    message_id = make_message(engine, service_id)
    start = utcnow() - timedelta(seconds=2)
    alert = make_event(engine, service_id, message_id, sent_at=start)
    alert_run = start_run(alert)
    assert wait_for_runs([alert_run], 60) == {alert_run: "COMPLETED"}
    vodafone = statuses(engine, alert)["vodafone"].identifier
    with unit_of_work(engine) as session:
        number = session.scalar(select(BroadcastProviderMessageNumber.broadcast_provider_message_number)
                                .where(BroadcastProviderMessageNumber.broadcast_provider_message_id == vodafone))
        session.execute(delete(BroadcastProviderMessageNumber)
                        .where(BroadcastProviderMessageNumber.broadcast_provider_message_id == vodafone))
    update = make_event(engine, service_id, message_id, message_type="update", sent_at=start + timedelta(seconds=1))

    def repair() -> None:
        with unit_of_work(engine) as session:
            session.execute(insert(BroadcastProviderMessageNumber).values(
                broadcast_provider_message_number=number, broadcast_provider_message_id=vodafone))

    sim.reset()
    return update, repair


def test_retry_from_the_ui_leaves_a_technical_failure_and_a_custom_run_replays_only_it(environment, engine, sim):
    with serving():
        update, repair = update_failing_on_vodafone(engine, sim)
        run_id = start_run(update)
        assert wait_for_runs([run_id], 60) == {run_id: "FAILED"}
        before = statuses(engine, update)
        assert before["vodafone"].status == "technical-failure" and "message number" in before["vodafone"].last_error
        assert {p for p, s in before.items() if s.status == "returned-ack"} == {"ee", "three", "o2"}
        repair()
        sim.reset()

        with get_client(sync_client=True) as client:  # what the UI's "Retry" button sends
            client.set_flow_run_state(uuid.UUID(run_id), AwaitingRetry(message="Retry from the UI"))
        assert wait_for_runs([run_id], 60) == {run_id: "FAILED"}
        with get_client(sync_client=True) as client:
            assert f"broadcasts send-event {update}" in client.read_flow_run(uuid.UUID(run_id)).state.message
        assert sim.invocations() == [] and statuses(engine, update)["vodafone"].history == before["vodafone"].history

        with get_client(sync_client=True) as client:  # a Custom run with replay_failed set
            deployment = client.read_deployment_by_name(SEND_EVENT_DEPLOYMENT)
            custom = str(client.create_flow_run_from_deployment(
                deployment.id, parameters={"broadcast_event_id": str(update), "replay_failed": True}).id)
        assert wait_for_runs([custom], 60) == {custom: "COMPLETED"}

    after = statuses(engine, update)
    assert {s.status for s in after.values()} == {"returned-ack"}
    assert [c["function"] for c in sim.invocations()] == ["vodafone-1-proxy"]
    assert calls_for(sim, before["vodafone"].identifier) and after["vodafone"].identifier == before["vodafone"].identifier


def test_a_custom_run_of_send_provider_message_replays_one_provider_with_its_identifier(environment, engine, sim):
    with serving():
        update, repair = update_failing_on_vodafone(engine, sim)
        assert wait_for_runs([start_run(update)], 60)
        identifier = statuses(engine, update)["vodafone"].identifier
        repair()
        sim.reset()

        for provider in ("vodafone", "ee"):  # ee already acknowledged: a no-op
            run_id = start_run(update, SEND_PROVIDER_DEPLOYMENT, provider=provider)
            assert wait_for_runs([run_id], 60) == {run_id: "COMPLETED"}

    assert [(c["function"], c["payload"]["identifier"]) for c in sim.invocations()] == [
        ("vodafone-1-proxy", str(identifier))
    ]
    assert statuses(engine, update)["vodafone"].status == "returned-ack"

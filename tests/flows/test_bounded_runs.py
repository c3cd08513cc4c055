"""A run's retries end at its event's expiry, and a database blip while reading the fan-out does
not fail an alert's run at once (docs/behaviour.md §4)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from tests.factories import make_event, make_message, make_service
from tests.flows.helpers import finishes_at, run_event, statuses

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_the_final_state_comes_at_expiry_not_a_full_backoff_later(configure, engine, sim):
    # Delays 0.5, 1, 2, 4 s (scale 0.5) put attempts at 0, 0.5, 1.5, 3.5 and 7.5 s after the run
    # starts; the next wait, 8 s, would pass the finish time 12 s away by at least 3.5 s (more if
    # the run started late), so it is cut to land just after it.
    configure(ENABLED_CBCS="ee", BROADCAST_RETRY_DELAY_SCALE="0.5")
    sim.fault("ee-1-proxy", http_status=503)
    sim.fault("ee-2-proxy", http_status=503)
    service_id = make_service(engine)
    event_id = make_event(engine, service_id, make_message(engine, service_id), expires_in=timedelta(seconds=12))

    state = run_event(event_id)

    assert state.is_failed()
    ee = statuses(engine, event_id)["ee"]
    assert ee.status == "technical-failure" and "expired while retrying" in ee.last_error
    late = (ee.history[-1].created_at - finishes_at(engine, event_id)).total_seconds()
    assert 0 < late < 2, f"recorded {late:.1f} s after expiry"
    assert ee.attempts >= 3


def test_a_database_outage_while_reading_the_fan_out_is_retried_then_fails_saying_why(configure, sim):
    configure(DATABASE_URL="postgresql://postgres@127.0.0.1:1/down")
    state = run_event(uuid.uuid4())

    assert state.is_failed()
    assert "the database is unavailable" in state.message and "nothing sent" in state.message
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    (read,) = [r for r in runs if r.name.startswith("read-event-plan")]
    assert read.run_count == 4  # the first try and three quick retries
    assert sim.invocations() == []

"""send-provider-message: an operator re-runs one (event, provider); a no-op once acknowledged.
Always an explicit replay: it sends a technical-failure message again, with the same identifier."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.states import Completed, Failed, State

from broadcasts.errors import DispatchError
from broadcasts.providers import get_provider
from broadcasts.settings import get_settings
from broadcasts.validation import parse_uuid
from flows.outcomes import finished, publish_table, unacknowledged, wait_for_all
from tasks.read_event_plan import read_event_plan
from tasks.send_to_provider import planned_for

FLOW_NAME = "send-provider-message"
DEPLOYMENT_NAME = f"{FLOW_NAME}/{FLOW_NAME}"  # the one deployment, named after its flow


@flow(name=FLOW_NAME, flow_run_name="send-provider-message-{provider}-{broadcast_event_id}")
def send_provider_message(broadcast_event_id: str, provider: str) -> State:
    settings = get_settings()
    if not settings.cbc_proxy_enabled:
        get_run_logger().info("CBC_PROXY_ENABLED is false: nothing is sent for event %s", broadcast_event_id)
        return Completed(message="dispatch disabled: nothing sent")
    event_id = parse_uuid(broadcast_event_id, "broadcast event id")
    try:
        get_provider(provider)  # an unknown provider fails here, before anything runs
        plan = read_event_plan(event_id)
    except DispatchError as error:
        return Failed(message=f"nothing sent for event {event_id}: {error}")
    send = planned_for(plan.finishes_at, settings.broadcast_retry_delay_scale)
    future = send.submit(broadcast_event_id, provider, replay_failed=True)
    rows = publish_table(event_id, wait_for_all([provider], [future]))
    missing = unacknowledged(rows, [provider])
    if missing:
        return Failed(message=f"event {event_id} not acknowledged by {missing[0]}")
    return Completed(message=finished(event_id, rows, [provider]))

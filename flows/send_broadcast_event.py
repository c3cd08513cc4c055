"""send-broadcast-event: send one event to every network its service may use, in parallel."""

from __future__ import annotations

from prefect import flow, get_run_logger, unmapped
from prefect.states import Completed, Failed, State

from broadcasts.errors import DispatchError
from broadcasts.models import TECHNICAL_FAILURE
from broadcasts.settings import get_settings
from broadcasts.validation import parse_uuid
from flows.outcomes import finished, publish_table, unacknowledged, wait_for_all
from tasks.read_event_plan import read_event_plan
from tasks.send_to_provider import planned_for

FLOW_NAME = "send-broadcast-event"
DEPLOYMENT_NAME = f"{FLOW_NAME}/{FLOW_NAME}"  # the one deployment, named after its flow
RUN_NAME = f"{FLOW_NAME}-{{broadcast_event_id}}"


def idempotency_key(event_id: object) -> str:
    """The key the webhook starts an event's send with: a repeated call finds the same run, and
    resume-dispatch starts an event that never had a run with it too."""
    return f"{FLOW_NAME}:{event_id}"


def run_name(event_id: object) -> str:
    """What its runs are called; the webhook and resume-dispatch name a run so when creating it."""
    return RUN_NAME.format(broadcast_event_id=event_id)


@flow(name=FLOW_NAME, flow_run_name=RUN_NAME)
def send_broadcast_event(broadcast_event_id: str, replay_failed: bool = False) -> State:
    """`replay_failed`: an operator's explicit re-send (`broadcasts send-event`, or a Custom run
    that sets it), which sends technical-failure providers again. Every other run (the webhook,
    the event trigger, resume, a UI Retry) reports them and leaves them alone."""
    logger = get_run_logger()
    settings = get_settings()
    if not settings.cbc_proxy_enabled:
        logger.info("CBC_PROXY_ENABLED is false: nothing is sent for event %s", broadcast_event_id)
        return Completed(message="dispatch disabled: nothing sent")

    event_id = parse_uuid(broadcast_event_id, "broadcast event id")
    try:
        plan = read_event_plan(event_id)
    except DispatchError as error:
        return Failed(message=f"nothing sent for event {event_id}: {error}")
    if not plan.providers:
        logger.warning("event %s: its service may use none of the enabled providers %s; nothing sent",
                       event_id, ", ".join(settings.enabled_cbcs))
        return Completed(message="no available provider: nothing sent")

    send = planned_for(plan.finishes_at, settings.broadcast_retry_delay_scale)
    futures = send.map(unmapped(broadcast_event_id), plan.providers, replay_failed=unmapped(replay_failed))
    rows = publish_table(event_id, wait_for_all(plan.providers, futures))

    missing = unacknowledged(rows, plan.providers)
    if missing:
        replay = "" if replay_failed or all(r["status"] != TECHNICAL_FAILURE for r in rows) else (
            f"; only a replay sends a technical-failure again: `broadcasts send-event {event_id}`")
        return Failed(message=f"event {event_id} not acknowledged by {', '.join(missing)}{replay}")
    return Completed(message=finished(event_id, rows, plan.providers))

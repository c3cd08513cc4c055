"""Every name that crosses a process boundary, declared once: flows, deployments, the work pool,
its queues, the concurrency limits and the Prefect events. `prefect.yaml` repeats them, and a
test checks the two agree."""

from __future__ import annotations

from flows.send_broadcast_event import FLOW_NAME as SEND_EVENT_FLOW
from flows.send_provider_message import FLOW_NAME as SEND_PROVIDER_FLOW
from tasks.provider_limits import SLOT_STUCK_EVENT, limit_name
from flows.link_tests import FLOW_NAME as LINK_TESTS_FLOW
from flows.link_tests import ROUTE_FAILING_EVENT
from tasks.send_provider_message import PROVIDER_BLOCKED_EVENT

WORK_POOL = "broadcasts"
ALERTS_QUEUE = "alerts"
LINK_TESTS_QUEUE = "link-tests"
# Lower number = higher priority: a worker takes alerts before link tests.
QUEUE_PRIORITIES = {ALERTS_QUEUE: 1, LINK_TESTS_QUEUE: 10}

# A deployment is named after its flow, so "send-broadcast-event/send-broadcast-event".
SEND_EVENT_DEPLOYMENT = f"{SEND_EVENT_FLOW}/{SEND_EVENT_FLOW}"
SEND_PROVIDER_DEPLOYMENT = f"{SEND_PROVIDER_FLOW}/{SEND_PROVIDER_FLOW}"

RESUME_FLOW = "resume-dispatch"

EVENT_CREATED = "broadcast.event.created"  # a Prefect event whose resource carries the event id
EVENT_RESOURCE_PREFIX = "broadcasts.event."  # resource id: broadcasts.event.<event id>


def idempotency_key(event_id: object) -> str:
    """One run of send-broadcast-event per event, however often it is asked for."""
    return f"{SEND_EVENT_FLOW}:{event_id}"


__all__ = [
    "PROVIDER_BLOCKED_EVENT", "ROUTE_FAILING_EVENT", "LINK_TESTS_FLOW", "RESUME_FLOW", "ALERTS_QUEUE", "EVENT_CREATED", "EVENT_RESOURCE_PREFIX", "LINK_TESTS_QUEUE", "QUEUE_PRIORITIES",
    "SEND_EVENT_DEPLOYMENT", "SEND_EVENT_FLOW", "SEND_PROVIDER_DEPLOYMENT", "SEND_PROVIDER_FLOW",
    "SLOT_STUCK_EVENT", "WORK_POOL", "idempotency_key", "limit_name",
]

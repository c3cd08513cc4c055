"""Every name that crosses a process boundary, gathered for the top floor: flows, deployments,
the work pool, its queues, the concurrency limits and the Prefect events. The pool, queue and
event-created names are defined here; the rest are defined beside the flows and tasks that use
them (those layers cannot import this one) and only re-exported. `prefect.yaml` repeats them, and
tests/deployments/test_prefect_yaml.py checks the two agree."""

from __future__ import annotations

from flows.link_tests import FLOW_NAME as LINK_TESTS_FLOW
from flows.link_tests import ROUTE_FAILING_EVENT
from flows.resume_dispatch import FLOW_NAME as RESUME_FLOW
from flows.resume_dispatch import SEND_EVENT_DEPLOYMENT, SEND_PROVIDER_DEPLOYMENT
from flows.resume_dispatch import webhook_key as idempotency_key
from flows.send_broadcast_event import FLOW_NAME as SEND_EVENT_FLOW
from flows.send_provider_message import FLOW_NAME as SEND_PROVIDER_FLOW
from tasks.provider_limits import SLOT_STUCK_EVENT, limit_name
from tasks.send_provider_message import PROVIDER_BLOCKED_EVENT, PROVIDER_WAITING_EVENT

WORK_POOL = "broadcasts"
ALERTS_QUEUE = "alerts"
LINK_TESTS_QUEUE = "link-tests"
# Lower number = higher priority: a worker takes alerts before link tests.
QUEUE_PRIORITIES = {ALERTS_QUEUE: 1, LINK_TESTS_QUEUE: 10}

EVENT_CREATED = "broadcast.event.created"  # a Prefect event whose resource carries the event id
EVENT_RESOURCE_PREFIX = "broadcasts.event."  # resource id: broadcasts.event.<event id>

__all__ = [
    "ALERTS_QUEUE", "EVENT_CREATED", "EVENT_RESOURCE_PREFIX", "LINK_TESTS_FLOW", "LINK_TESTS_QUEUE",
    "PROVIDER_BLOCKED_EVENT", "PROVIDER_WAITING_EVENT", "QUEUE_PRIORITIES", "RESUME_FLOW", "ROUTE_FAILING_EVENT",
    "SEND_EVENT_DEPLOYMENT", "SEND_EVENT_FLOW", "SEND_PROVIDER_DEPLOYMENT", "SEND_PROVIDER_FLOW",
    "SLOT_STUCK_EVENT", "WORK_POOL", "idempotency_key", "limit_name",
]

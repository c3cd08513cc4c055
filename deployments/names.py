"""The names only the top floor uses: the work pool, its queues and the event-created event.

Every other name that crosses a process boundary is declared once, beside what it names, in the
lowest layer that needs it: the flow and deployment names and the webhook's idempotency key with
their flows (`flows/*.py`), the slot and operator-alert events with their tasks. `prefect.yaml`
repeats them, and tests/deployments/test_prefect_yaml.py checks the two agree."""

from __future__ import annotations

WORK_POOL = "broadcasts"
ALERTS_QUEUE = "alerts"
LINK_TESTS_QUEUE = "link-tests"
# Lower number = higher priority: a worker takes alerts before link tests.
QUEUE_PRIORITIES = {ALERTS_QUEUE: 1, LINK_TESTS_QUEUE: 10}

EVENT_CREATED = "broadcast.event.created"  # a Prefect event whose resource carries the event id
EVENT_RESOURCE_PREFIX = "broadcasts.event."  # resource id: broadcasts.event.<event id>

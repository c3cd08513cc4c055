"""The fan-out's one read (which providers, and until when), retried a few quick times when the
database is unavailable: a blip must not fail an alert's run before anything was tried."""

from __future__ import annotations

import uuid
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from broadcasts import event_plan
from broadcasts.db import get_engine
from broadcasts.errors import DatabaseUnavailable
from broadcasts.settings import get_settings

READ_RETRY_DELAYS = [0.5, 1, 2]


def _database_unavailable(task: Any, task_run: Any, state: Any) -> bool:
    return isinstance(state.data, DatabaseUnavailable)


@task(
    name="read-event-plan",
    retries=len(READ_RETRY_DELAYS),
    retry_delay_seconds=READ_RETRY_DELAYS,
    retry_condition_fn=_database_unavailable,
    cache_policy=NO_CACHE,  # read every run, never from a cache (and no key to hash)
)
def read_event_plan(broadcast_event_id: uuid.UUID) -> event_plan.EventPlan:
    settings = get_settings()
    return event_plan.read_plan(get_engine(settings.database_url), broadcast_event_id, settings.enabled_cbcs)

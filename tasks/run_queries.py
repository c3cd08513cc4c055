"""The Prefect reads resume-dispatch decides from: an event's latest send run and its live runs,
found by the `broadcast_event_id` parameter, every page of them; and the last sign of life of a
Running run, from the events Prefect has stored."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.events.filters import EventFilter, EventOccurredFilter, EventResourceFilter
from prefect.exceptions import ObjectNotFound

from broadcasts.resume import Unfinished

LIVE_STATES = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED, StateType.CANCELLING]
# Runs for an event are created after it is written; this allows for the writer's clock.
CLOCK_MARGIN = timedelta(hours=1)
PAGE = 200  # the API's largest page
EVENTS_PAGE = 50  # the events API's largest page


def deployment_id(client: SyncPrefectClient, name: str) -> uuid.UUID | None:
    try:
        return client.read_deployment_by_name(name).id
    except ObjectNotFound:
        return None


def latest_send_runs(client: SyncPrefectClient, send_event: uuid.UUID, events: list[Unfinished]
                     ) -> dict[uuid.UUID, FlowRun]:
    """Each event's most recently created send-broadcast-event run, in any state. Only runs
    expected to start after the oldest event was written are read."""
    since = min(event.sent_at for event in events) - CLOCK_MARGIN
    runs = all_flow_runs(client, FlowRunFilter(
        deployment_id=FlowRunFilterDeploymentId(any_=[send_event]),
        expected_start_time=FlowRunFilterExpectedStartTime(after_=since),
    ))
    latest: dict[uuid.UUID, FlowRun] = {}
    for event_id, run in for_events(runs, {event.event_id for event in events}):
        if event_id not in latest or run.created > latest[event_id].created:  # type: ignore[operator]
            latest[event_id] = run
    return latest


def live_runs(client: SyncPrefectClient, deployments: list[uuid.UUID | None], event_ids: set[uuid.UUID]
              ) -> dict[uuid.UUID, list[FlowRun]]:
    """The runs of these deployments in a live state, for each event that has any."""
    runs = all_flow_runs(client, FlowRunFilter(
        deployment_id=FlowRunFilterDeploymentId(any_=[d for d in deployments if d is not None]),
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=LIVE_STATES)),
    ))
    found: dict[uuid.UUID, list[FlowRun]] = {}
    for event_id, run in for_events(runs, event_ids):
        found.setdefault(event_id, []).append(run)
    return found


def all_flow_runs(client: SyncPrefectClient, flow_run_filter: FlowRunFilter) -> Iterator[FlowRun]:
    offset = 0
    while True:
        page = client.read_flow_runs(flow_run_filter=flow_run_filter, sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                                     limit=PAGE, offset=offset)
        yield from page
        if len(page) < PAGE:
            return
        offset += PAGE


def for_events(runs: Iterable[FlowRun], event_ids: set[uuid.UUID]) -> Iterator[tuple[uuid.UUID, FlowRun]]:
    """(event id, run) for each run whose `broadcast_event_id` parameter is one of these events."""
    for run in runs:
        event_id = as_uuid(run.parameters.get("broadcast_event_id"))
        if event_id in event_ids:
            yield event_id, run


def as_uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def state_name(run: FlowRun) -> str:
    return run.state.name if run.state is not None else str(run.state_name)


def signs_of_life(client: SyncPrefectClient, runs: list[FlowRun], since: datetime
                  ) -> tuple[datetime | None, dict[uuid.UUID, datetime]]:
    """The time of the newest event Prefect has stored, and for each run the time of the newest
    stored event about it (its heartbeats and state changes), both since `since` (the server
    counts every matching event, so the window is kept short). The first is the clock the second
    is read against: events reach the store late when the server is busy, and a run is silent
    only if the store has moved on without it."""
    newest = client.read_events(EventFilter(occurred=EventOccurredFilter(since=since)), limit=1).events
    latest: dict[uuid.UUID, datetime] = {}
    for start in range(0, len(runs), EVENTS_PAGE):
        batch = {f"prefect.flow-run.{run.id}": run.id for run in runs[start:start + EVENTS_PAGE]}
        page = client.read_events(EventFilter(
            occurred=EventOccurredFilter(since=since),
            resource=EventResourceFilter(id=list(batch), distinct=True),  # the newest event of each
        ), limit=EVENTS_PAGE)
        latest.update({batch[event.resource.id]: event.occurred for event in page.events})
    return (newest[0].occurred if newest else None), latest

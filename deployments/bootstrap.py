"""`broadcasts bootstrap`: what the deployments stand on, created if missing and left alone if
present, so running it twice changes nothing.

- the `process` work pool `broadcasts`;
- its queues: `alerts` before `link-tests` (a worker takes the higher-priority queue first, so a
  link test never queues ahead of an alert);
- the automations of `automations.py`: the zombie-run one always, the operator alerts when a
  notification block is named (ALERT_NOTIFICATION_BLOCK).
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.events.schemas.automations import AutomationCore
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.workers.process import ProcessWorker

from broadcasts.settings import DEFAULT_MISSED_HEARTBEATS
from deployments import automations, names
from flows.resume_dispatch import heartbeat_seconds


@dataclass(frozen=True)
class Step:
    what: str  # e.g. "work pool broadcasts"
    created: bool | None  # None: a note, not a thing

    def __str__(self) -> str:
        return f"{'note' if self.created is None else 'created' if self.created else 'found'}: {self.what}"


def bootstrap(notification_block: str | None = None, missed_heartbeats: int = DEFAULT_MISSED_HEARTBEATS) -> list[Step]:
    """Creates whatever is missing against the configured Prefect API; returns what it did.
    `missed_heartbeats`: CRASHED_AFTER_MISSED_HEARTBEATS, the zombie-run automation's threshold."""
    heartbeat = heartbeat_seconds()
    if heartbeat is None:
        raise ValueError("PREFECT_FLOWS_HEARTBEAT_FREQUENCY is unset: the zombie-run automation is made from the runs' heartbeat")
    with get_client(sync_client=True) as client:
        steps = [
            _work_pool(client),
            *(_queue(client, queue, priority) for queue, priority in names.QUEUE_PRIORITIES.items()),
            _automation(client, automations.zombie_runs(heartbeat, missed_heartbeats)),
        ]
        if notification_block is None:
            steps.append(Step("operator alerts are off: set ALERT_NOTIFICATION_BLOCK to a notification "
                              "block (<block type slug>/<block name>) to turn them on", created=None))
            return steps
        block_id = automations.notification_block_id(client, notification_block)
        steps += [_automation(client, a) for a in automations.operator_alerts(block_id)]
        return steps


def _automation(client: SyncPrefectClient, automation: AutomationCore) -> Step:
    outcome = automations.ensure(client, automation)
    return Step(f"automation {automation.name!r}" + (" (it had changed)" if outcome == "updated" else ""),
                created=outcome != "found")


def _work_pool(client: SyncPrefectClient) -> Step:
    what = f"work pool {names.WORK_POOL} (process)"
    try:
        client.read_work_pool(names.WORK_POOL)
        return Step(what, created=False)
    except ObjectNotFound:
        pass
    try:
        client.create_work_pool(WorkPoolCreate(
            name=names.WORK_POOL, type="process",
            base_job_template=ProcessWorker.get_default_base_job_template(),
            description="Emergency cell-broadcast dispatch: alerts first, then link tests.",
        ))
    except ObjectAlreadyExists:  # another bootstrap won the race
        return Step(what, created=False)
    return Step(what, created=True)


def _queue(client: SyncPrefectClient, queue: str, priority: int) -> Step:
    what = f"queue {queue} (priority {priority}) in {names.WORK_POOL}"
    try:
        existing = client.read_work_queue_by_name(queue, work_pool_name=names.WORK_POOL)
    except ObjectNotFound:
        try:
            client.create_work_queue(queue, work_pool_name=names.WORK_POOL, priority=priority)
        except ObjectAlreadyExists:
            return Step(what, created=False)
        return Step(what, created=True)
    if existing.priority != priority:  # someone changed it: alerts must stay first
        client.update_work_queue(existing.id, priority=priority)
        return Step(f"{what} (priority was {existing.priority})", created=True)
    return Step(what, created=False)

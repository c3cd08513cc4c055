"""The Prefect automations `broadcasts bootstrap` keeps in place: one that finishes runs whose
process died, and the operator alerts.

- A SIGKILLed worker leaves its flow run Running for ever. Runs send a heartbeat every
  PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds (30 in the production settings); a run of ours that
  misses CRASHED_AFTER_MISSED_HEARTBEATS of them (3) is marked Crashed, so resume-dispatch can take it over.
- With ALERT_NOTIFICATION_BLOCK set (`<block type slug>/<block name>`, e.g.
  `slack-webhook/on-call`), each alert sends a notification through that block naming what
  happened and what to do: a send run that ended Failed or Crashed, a send run claimed (Pending)
  that has neither started nor ended 30 s later, a send run marked Late (nobody claimed it), an
  event blocked behind an earlier event's technical-failure, an event that has waited long for an
  earlier one, a stuck provider slot, a failed link-test run, and a route that failed several
  link-test runs in a row. The first three cover a run no process will start: resume-dispatch
  replaces it, and the page says so.

Each automation has a fixed name: bootstrap creates it when missing and rewrites it when it
differs, so running bootstrap again changes nothing.
"""

from __future__ import annotations

from datetime import timedelta

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState, SendNotification
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

from flows.expire_broadcasts import FLOW_NAME as EXPIRY_FLOW
from flows.link_tests import FLOW_NAME as LINK_TESTS_FLOW, ROUTE_FAILING_EVENT
from flows.resume_dispatch import FLOW_NAME as RESUME_FLOW, NOT_STARTED_WITHIN
from flows.send_broadcast_event import FLOW_NAME as SEND_EVENT_FLOW
from flows.send_provider_message import FLOW_NAME as SEND_PROVIDER_FLOW
from tasks.provider_limits import SLOT_STUCK_EVENT
from tasks.send_to_provider import PROVIDER_BLOCKED_EVENT, PROVIDER_WAITING_EVENT

PREFIX = "broadcasts: "
SEND_FLOWS = [SEND_EVENT_FLOW, SEND_PROVIDER_FLOW]
# After Pending, any of these means the run started or ended: Retrying and Rerunning are Running
# states of a run started again; Cancelling is an operator's choice, not a lost run.
STARTED_OR_ENDED = ["Running", "Retrying", "Rerunning", "Completed", "Failed", "Crashed", "Cancelled", "Cancelling"]
EVENT_ID = "{{ flow_run.parameters.broadcast_event_id }}"
STATUS_ADVICE = (
    f"See `broadcasts status {EVENT_ID}`; after fixing the cause, Retry the run in the UI or run "
    f"`broadcasts send-event {EVENT_ID}`. A UI Retry does not send again to a provider that ended "
    f"technical-failure: `broadcasts send-event {EVENT_ID}`, `broadcasts replay {EVENT_ID} PROVIDER` or a "
    "Custom run of send-provider-message does."
)
NOT_STARTED_ADVICE = (
    f"resume-dispatch marks it Crashed once it is {NOT_STARTED_WITHIN.total_seconds():g} s overdue and "
    f"starts its event again; if it does not, run `broadcasts send-event {EVENT_ID}`. {{{{ flow_run|ui_url }}}}"
)


def _flows(flow_names: list[str]) -> dict[str, object]:
    return {"prefect.resource.role": "flow", "prefect.resource.name": flow_names}


ZOMBIE_RUNS = PREFIX + "mark runs without heartbeats crashed"


def zombie_runs(heartbeat_seconds: float, missed_heartbeats: int) -> AutomationCore:
    silence = missed_heartbeats * heartbeat_seconds
    return AutomationCore(
        name=ZOMBIE_RUNS,
        description="A run whose process died stops sending heartbeats; marking it Crashed lets "
                    "resume-dispatch finish its event with the same identifiers.",
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=_flows([*SEND_FLOWS, LINK_TESTS_FLOW, RESUME_FLOW, EXPIRY_FLOW]),
            # Running too, which the server itself announces: a process killed before its first
            # heartbeat left the server (a SIGKILL within a second of the start) is watched as well.
            after={"prefect.flow-run.heartbeat", "prefect.flow-run.Running"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=silence),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"no heartbeat for {silence:g} s: its process died")],
    )


def not_started_after_claim() -> EventTrigger:
    """A send run that entered Pending and neither started nor ended within NOT_STARTED_WITHIN:
    its claimant died before the run was Running (which the zombie-run watch needs), lost the
    claim's reply, or cannot reach the API."""
    return EventTrigger(
        match={"prefect.resource.id": "prefect.flow-run.*"},
        match_related=_flows(SEND_FLOWS),
        after={"prefect.flow-run.Pending"},
        expect={f"prefect.flow-run.{state}" for state in STARTED_OR_ENDED},
        for_each={"prefect.resource.id"},
        posture=Posture.Proactive,
        threshold=1,
        within=NOT_STARTED_WITHIN,
    )


def operator_alerts(block_document_id: object) -> list[AutomationCore]:
    def notify(subject: str, body: str) -> list[SendNotification]:
        return [SendNotification(block_document_id=block_document_id, subject=subject, body=body)]

    def on_event(event: str) -> EventTrigger:
        return EventTrigger(expect={event}, posture=Posture.Reactive, threshold=1, within=timedelta(0))

    def on_run_state(flow_names: list[str], states: list[str]) -> EventTrigger:
        return EventTrigger(match={"prefect.resource.id": "prefect.flow-run.*"}, match_related=_flows(flow_names),
                            expect={f"prefect.flow-run.{s}" for s in states}, posture=Posture.Reactive,
                            threshold=1, within=timedelta(0))

    return [
        AutomationCore(
            name=PREFIX + "send run failed or crashed",
            trigger=on_run_state(SEND_FLOWS, ["Failed", "Crashed"]),
            actions=notify("Broadcast send {{ flow_run.state.name }}: {{ flow_run.name }}",
                           "{{ flow_run.name }} ended {{ flow_run.state.name }}: {{ flow_run.state.message }}\n"
                           + STATUS_ADVICE + "\n{{ flow_run|ui_url }}"),
        ),
        AutomationCore(
            name=PREFIX + "send run not started",
            trigger=not_started_after_claim(),
            actions=notify("Broadcast send not started: {{ flow_run.name }}",
                           f"{{{{ flow_run.name }}}} was claimed (Pending) and has neither started nor ended "
                           f"{NOT_STARTED_WITHIN.total_seconds():g} s later: the process that claimed it died, "
                           "or cannot reach the Prefect API. " + NOT_STARTED_ADVICE),
        ),
        AutomationCore(
            name=PREFIX + "send run late",
            trigger=on_run_state(SEND_FLOWS, ["Late"]),
            actions=notify("Broadcast send late: {{ flow_run.name }}",
                           "{{ flow_run.name }} is past its start and no process has claimed it: check that "
                           "the dispatcher, `broadcasts serve` or a worker on the alerts queue is running "
                           "and has a run free. " + NOT_STARTED_ADVICE),
        ),
        AutomationCore(
            name=PREFIX + "event blocked behind a failed event",
            trigger=on_event(PROVIDER_BLOCKED_EVENT),
            actions=notify("Broadcast event {{ event.payload.event_id }} blocked for {{ event.payload.provider }}",
                           "{{ event.payload.message }}"),
        ),
        AutomationCore(
            name=PREFIX + "event waiting long for an earlier event",
            trigger=on_event(PROVIDER_WAITING_EVENT),
            actions=notify("Broadcast event {{ event.payload.event_id }} waiting for {{ event.payload.provider }}",
                           "{{ event.payload.message }}"),
        ),
        AutomationCore(
            name=PREFIX + "provider slot stuck",
            trigger=on_event(SLOT_STUCK_EVENT),
            actions=notify("Provider slot stuck: {{ event.payload.provider }}", "{{ event.payload.detail }}"),
        ),
        AutomationCore(
            name=PREFIX + "link tests failed",
            trigger=on_run_state([LINK_TESTS_FLOW], ["Failed", "Crashed"]),
            actions=notify("Link tests {{ flow_run.state.name }}",
                           "{{ flow_run.state.message }}\nA failing route cannot carry an alert: check the "
                           "proxy and the network's CBC. {{ flow_run|ui_url }}"),
        ),
        AutomationCore(
            name=PREFIX + "route failing link tests",
            trigger=on_event(ROUTE_FAILING_EVENT),
            actions=notify("Route failing: {{ event.payload.provider }} {{ event.payload.route }}",
                           "{{ event.payload.message }}"),
        ),
    ]


def unchanged(current: AutomationCore, wanted: AutomationCore) -> bool:
    """Compared as Python values: a trigger's `expect` and `after` are sets, and their order in
    JSON varies from process to process (string hashing), which made equal automations differ."""
    return current.model_dump() == wanted.model_dump()


def ensure(client: SyncPrefectClient, automation: AutomationCore) -> str:
    """'created', 'found' or 'updated'."""
    existing = client.read_automations_by_name(automation.name)
    if not existing:
        client.create_automation(automation)
        return "created"
    if unchanged(AutomationCore.model_validate(existing[0].model_dump()), automation):
        return "found"
    client.update_automation(existing[0].id, automation)
    return "updated"


def notification_block_id(client: SyncPrefectClient, reference: str) -> object:
    """The block document named `<block type slug>/<block name>`."""
    from prefect.exceptions import ObjectNotFound

    slug, _, name = reference.partition("/")
    try:
        return client.read_block_document_by_name(name, block_type_slug=slug).id
    except ObjectNotFound:
        raise ObjectNotFound(http_exc=None, help_message=(
            f"ALERT_NOTIFICATION_BLOCK names the block {reference!r}, which does not exist: create it "
            f"(e.g. in the UI's Blocks page) or unset the variable")) from None

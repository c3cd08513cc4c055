"""resume-dispatch: start a send for every event the database says is unfinished and no run is
working on, so a lost webhook call or a dead process does not lose an alert (docs/behaviour.md §7).

Why it neither loses an event nor starts two sends of one:

- The database decides what is unfinished (`broadcasts.resume`); Prefect only says whether a run
  is still on it. A run of send-broadcast-event or send-provider-message for the event is live
  while it is Scheduled (AwaitingRetry and Late included), Pending, Running, Paused or Cancelling.
  A run whose process was killed stays Running until the zombie automation marks it Crashed; from
  then on it is not live, and the event is resumed.
- That automation acts on Prefect's event stream, which a busy or restarted services process can
  leave minutes behind; a dead run must not wait on it. So a Running run is also not live when it
  has been silent (no heartbeat, no state change) for CRASHED_AFTER_MISSED_HEARTBEATS heartbeats
  and one more (the automation's head start), counted to the newest event Prefect has stored, not
  to this process's clock: events stored late make no run look silent until later ones are stored.
- A run nobody starts is not live either: Pending for more than `NOT_STARTED_WITHIN` (its
  claimant died before its first heartbeat, lost the claim's reply, or could not reach the API to
  set Running), or Scheduled with its start that long past (no process free to claim it); a
  Scheduled run due later (a retry planned for later) is live. Before its event is started again,
  such a run, or a silent Running one, is read again and moved to Crashed, so that no process
  claims it later and runs it beside the new one. A Scheduled run is first claimed (set Pending)
  as the dispatcher claims it (tasks/claim.py): the server refuses the claim if another process
  claimed it first. A run found changed, or whose claim or Crashed state the server refuses, was
  claimed or started meanwhile: it is live, and the event is left alone. (Crashed, not Cancelled:
  a run that finds itself cancelled ends its sends technical-failure, which automatic resume
  leaves to an operator.) Two windows of about one API
  round trip remain, and the last point makes them harmless: a claimant silent for 30 s that sets
  Running between that read and the Crashed state goes on beside the new run, and so does a
  worker that listed the run as Scheduled just before and then claims it (the server accepts
  Crashed → Pending; the dispatcher reads a run again before claiming it).
- Every run it creates carries an idempotency key, and Prefect answers the existing run for a key
  it has seen. An event that never had a send-broadcast-event run gets the webhook's own key, so
  a late webhook call finds this run instead of starting another. Otherwise the key names the
  event's latest send-broadcast-event run (`<webhook key>:resume:<run id>`): two resumers that see
  the same history compute the same key and get one run, and once that run dies it is the latest,
  so the next resume gets a fresh key.
- The history is read before the live runs. A run another resumer creates meanwhile is either
  in neither read (both compute the same key), or in the live read (this one leaves it alone). A
  stale run that is the latest one names the new key, so its replacement is a new run; a second
  resumer that saw the same stale run finds it changed, and computes the same key.
- An extra run is still harmless: each send re-checks every rule, takes the per-message lock,
  reuses the identifier and payload, and never re-sends what a network acknowledged. This flow
  sends nothing itself; its only effect is creating runs.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from prefect import flow, get_run_logger
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import SetStateStatus
from prefect.runtime import flow_run as this_run
from prefect.states import Completed, Crashed, Failed, State

from broadcasts.db import TRANSIENT_DATABASE_ERRORS, get_engine, unit_of_work
from broadcasts.models import utcnow
from broadcasts.resume import Unfinished, events_to_dispatch
from broadcasts.settings import Settings, get_settings
from flows.send_broadcast_event import DEPLOYMENT_NAME as SEND_EVENT_DEPLOYMENT
from flows.send_broadcast_event import idempotency_key, run_name
from flows.send_provider_message import DEPLOYMENT_NAME as SEND_PROVIDER_DEPLOYMENT
from tasks.claim import propose_pending
from tasks.run_queries import deployment_id, latest_send_runs, live_runs, signs_of_life, state_name

FLOW_NAME = "resume-dispatch"
# A claimed run starts within seconds (the dispatcher: at once; serve: a process start) and a due
# run is claimed within a poll; one still Pending, or still Scheduled past its start, this long
# after has nobody to start it. The server's state times are compared with this process's clock:
# the hosts' clocks must agree within a few seconds (a resumer far ahead would take over healthy
# runs, which costs extra runs and pages, never a lost or doubled send).
NOT_STARTED_WITHIN = timedelta(seconds=30)

RESUME_DESCRIPTION = (
    "Every RESUME_INTERVAL_SECONDS: start send-broadcast-event for each unexpired event written "
    "more than RESUME_GRACE_SECONDS ago that a network has not yet acknowledged (nothing sent, or "
    "left sending or returned-error) and that no live run is working on: its webhook call was "
    "lost, its run crashed, or its run was never started (a run Pending, or Scheduled past its "
    "start, for over 30 s is marked Crashed first, and so is a Running run silent for "
    "CRASHED_AFTER_MISSED_HEARTBEATS heartbeats and one more). Safe to run at any time, also by hand: it only "
    "creates runs, one per event however many resumers run at once, and each send reuses the "
    "identifiers."
)


def resume_key(event_id: object, latest_run_id: object) -> str:
    return f"{idempotency_key(event_id)}:resume:{latest_run_id}"


@flow(name=FLOW_NAME, description=RESUME_DESCRIPTION)
def resume_dispatch() -> State:
    logger = get_run_logger()
    settings = get_settings()
    if not settings.cbc_proxy_enabled:
        logger.info("CBC_PROXY_ENABLED is false: nothing is resumed")
        return Completed(message="dispatch disabled: nothing resumed")
    try:
        unfinished = read_unfinished(settings)
    except TRANSIENT_DATABASE_ERRORS as error:
        return Failed(message=f"nothing resumed: the database is unavailable ({type(error).__name__})")
    if not unfinished:
        return resumed(0)

    with get_client(sync_client=True) as client:
        send_event = deployment_id(client, SEND_EVENT_DEPLOYMENT)
        if send_event is None:
            return Failed(message=f"nothing resumed: the deployment {SEND_EVENT_DEPLOYMENT} does not exist")
        event_ids = {event.event_id for event in unfinished}
        latest = latest_send_runs(client, send_event, unfinished)  # before the live runs: see above
        live = live_runs(client, [send_event, deployment_id(client, SEND_PROVIDER_DEPLOYMENT)], event_ids)
        silent = silent_runs(client, [run for runs in live.values() for run in runs], heartbeat_silence(settings))

        count = 0
        for event in unfinished:
            try:
                working, crashed = working_run(client, live.get(event.event_id, []), silent)
            except Exception as error:  # one event's stale run must not keep the others from resuming
                logger.warning("not resuming event %s this time: taking over its stale run failed (%s)",
                               event.event_id, error)
                continue
            if working is not None:
                logger.info("not resuming event %s: %s; run %s is %s",
                            event.event_id, event.reason, working.id, state_name(working))
                continue
            previous = latest.get(event.event_id)  # a run just Crashed is the latest: a new key
            key = idempotency_key(event.event_id) if previous is None else resume_key(event.event_id, previous.id)
            run = client.create_flow_run_from_deployment(
                send_event, parameters={"broadcast_event_id": str(event.event_id)}, idempotency_key=key,
                name=run_name(event.event_id))
            logger.info("resuming event %s: %s; %s → run %s",
                        event.event_id, event.reason, history(previous, crashed), run.id)
            count += 1
    return resumed(count)


def resumed(count: int) -> State:
    return Completed(message=f"resumed {count} event{'' if count == 1 else 's'}")


def read_unfinished(settings: Settings) -> list[Unfinished]:
    """The events the database says need a send, oldest first."""
    with unit_of_work(get_engine(settings.database_url)) as session:
        return events_to_dispatch(session, utcnow(), timedelta(seconds=settings.resume_grace_seconds),
                                  settings.enabled_cbcs)


def working_run(client: SyncPrefectClient, runs: list[FlowRun], silent: dict[uuid.UUID, timedelta]
                ) -> tuple[FlowRun | None, list[tuple[FlowRun, str]]]:
    """The run still working on an event, if any, and the stale runs moved to Crashed for it, each
    with why: not started, or silent (`silent`: run id → for how long). Those are taken over only
    when none of the event's live runs is working."""
    now = utcnow()
    verdicts = [(run, stale_because(run, now, silent)) for run in runs]
    if (working := next((run for run, why in verdicts if not why), None)) is not None:
        return working, []
    crashed = []
    for run, why in verdicts:
        if (current := take_over(client, run, why)) is not None:
            return current, crashed
        crashed.append((run, why))
    return None, crashed


def stale_because(run: FlowRun, now: datetime, silent: dict[uuid.UUID, timedelta]) -> str:
    """Why nobody is working on this live run, or "" when it may be working."""
    if not_started(run, now):
        return f"not started within {NOT_STARTED_WITHIN.total_seconds():g} s"
    if run.id in silent:
        return f"no heartbeat for {silent[run.id].total_seconds():.0f} s"
    return ""


def not_started(run: FlowRun, now: datetime) -> bool:
    """Pending for more than NOT_STARTED_WITHIN, or Scheduled (AwaitingRetry, Late) with its
    start more than that in the past."""
    state = run.state
    if state is None:
        return False
    if state.type == StateType.PENDING:
        return now - state.timestamp > NOT_STARTED_WITHIN
    due = state.state_details.scheduled_time or run.expected_start_time
    return state.type == StateType.SCHEDULED and due is not None and now - due > NOT_STARTED_WITHIN


def heartbeat_seconds() -> float | None:
    """The runs' heartbeat interval, PREFECT_FLOWS_HEARTBEAT_FREQUENCY (None: no heartbeats). The
    CLI applies the production settings (30 s) unless the operator set it, as for workers; the
    zombie automation (deployments/bootstrap.py) is made from it too."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY

    seconds = PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value()
    return float(seconds) if seconds else None


def heartbeat_silence(settings: Settings) -> timedelta | None:
    """How long a Running run may go without a sign of life: CRASHED_AFTER_MISSED_HEARTBEATS of
    its heartbeats and one more, so that the zombie automation acts first when Prefect's events
    are on time. None when runs send no heartbeats: then silence says nothing."""
    seconds = heartbeat_seconds()
    if seconds is None:
        return None
    return (settings.crashed_after_missed_heartbeats + 1) * timedelta(seconds=seconds)


def silent_runs(client: SyncPrefectClient, runs: list[FlowRun], silence: timedelta | None
                ) -> dict[uuid.UUID, timedelta]:
    """The Running runs with no stored sign of life (heartbeat or state change) for longer than
    `silence` before the newest event Prefect has stored, with how long. None of them when the
    events cannot be read: the zombie automation is then the only judge, as before."""
    running = [run for run in runs if run.state is not None and run.state.type == StateType.RUNNING]
    if silence is None or not running:
        return {}
    try:
        newest, latest = signs_of_life(client, running, utcnow() - 2 * silence)
    except Exception as error:  # this round resumes what it can without the verdict
        get_run_logger().warning("could not read the runs' heartbeats (%s): no Running run is judged silent", error)
        return {}
    found: dict[uuid.UUID, timedelta] = {}
    for run in running:
        quiet = silent_for(run, latest.get(run.id), newest)
        if quiet is not None and quiet > silence:
            found[run.id] = quiet
    return found


def silent_for(run: FlowRun, last_event: datetime | None, newest: datetime | None) -> timedelta | None:
    """How long the run had been silent when the newest stored event occurred: since its last
    stored event or the start of its state, whichever is later. None without a newest event (none
    stored in the window read: the store is that far behind, or nothing happened)."""
    assert run.state is not None
    if newest is None:
        return None
    last = max(run.state.timestamp, last_event) if last_event is not None else run.state.timestamp
    return newest - last


def take_over(client: SyncPrefectClient, run: FlowRun, why: str) -> FlowRun | None:
    """Moves a run nobody works on (not started, or silent) to Crashed, so that no process runs it
    beside its event's new run. None when done; otherwise the run as it is now, claimed, started
    or changed meanwhile (live)."""
    current = client.read_flow_run(run.id)
    if current.state is None or run.state is None or current.state.id != run.state.id:
        return current
    message = f"{why}; resumed by {FLOW_NAME} run {this_run.name} ({this_run.id}), which logs the new run"
    if current.state.type == StateType.SCHEDULED:
        # Claimed as the dispatcher claims a run: the server refuses if another process claimed it
        # first, and a claim whose reply was lost is still ours.
        if propose_pending(client, run.id, message=message) is None:
            return client.read_flow_run(run.id)
    if client.set_flow_run_state(run.id, Crashed(message=message)).status != SetStateStatus.ACCEPT:
        return client.read_flow_run(run.id)
    return None


def history(previous: FlowRun | None, crashed: list[tuple[FlowRun, str]]) -> str:
    """What became of the event's runs, for the log line."""
    ended = {run.id for run, _ in crashed}
    said = ([] if previous is not None and previous.id in ended else
            ["never announced" if previous is None else f"previous run {previous.id} {state_name(previous)}"])
    return "; ".join(said + [
        f"{'previous ' if previous is not None and run.id == previous.id else ''}run {run.id} "
        f"{state_name(run)}, {why}, now Crashed" for run, why in crashed])

"""resume-dispatch against the real Prefect server, the simulator and `broadcasts serve`: an event
that was never announced, or whose run died, gets one new run after the grace period; an event
whose run is still live gets none; two resumers at once create one run; a run nobody starts
(Pending, or Scheduled past its start, for over 30 s), and a Running run whose heartbeats stopped,
is marked Crashed and replaced.

Every test has a database of its own: resume looks at every unfinished event, and the shared test
database holds other tests' events on purpose."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import FlowRunSort
from prefect.events import emit_event
from prefect.states import AwaitingRetry, Crashed, Late, Pending, Running, Scheduled
from sqlalchemy import Engine, select

from broadcasts import dao
from broadcasts.db import get_engine, unit_of_work
from broadcasts.migrate import upgrade
from broadcasts.models import RETURNED_ACK, BroadcastEvent, utcnow
from broadcasts.providers import get_provider
from flows.send_broadcast_event import DEPLOYMENT_NAME as SEND_EVENT_DEPLOYMENT, idempotency_key
import flows.resume_dispatch
from flows.resume_dispatch import NOT_STARTED_WITHIN, resume_dispatch, take_over
from tests.conftest import backend
from tests.support.polling import wait_until
from tests.support.postgres import throwaway_postgres_database
from tests.deployments.serving import serving, start_run, wait_for_runs
from tests.factories import make_alert, make_event, make_message, make_service
from tests.flows.helpers import in_thread, statuses

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.long(75)]
# Long enough for a resume run to start and end within it on a loaded machine (1 s was not).
GRACE_SECONDS = 4.0

PROVIDERS = ["ee", "three", "o2", "vodafone"]
LIVE_STATE_TYPES = {"SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING"}


@contextmanager
def fresh_database_url(tmp_path: Path) -> Iterator[str]:
    if backend() == "sqlite":
        yield f"sqlite:///{tmp_path / 'resume.db'}"
        return
    with throwaway_postgres_database("resume_test") as url:
        yield url


@pytest.fixture
def db(configure, tmp_path: Path) -> Iterator[Engine]:  # type: ignore[no-untyped-def]
    """This test's own migrated database, configured for the flows and for `serving()`. Runs of
    its events still waiting at the end are deleted, so no later worker picks them up."""
    with fresh_database_url(tmp_path) as url:
        engine = get_engine(url)
        upgrade(engine)
        configure(DATABASE_URL=url)
        try:
            yield engine
        finally:
            with unit_of_work(engine) as session:
                event_ids = list(session.scalars(select(BroadcastEvent.id)))
            with get_client(sync_client=True) as client:
                for run in send_event_runs(event_ids):
                    if run.state_type is not None and run.state_type.value in LIVE_STATE_TYPES:
                        client.delete_flow_run(run.id)
            engine.dispose()


@pytest.fixture(scope="module")
def deployed(prefect_server: str) -> None:
    """The deployments resume creates runs of, registered as `broadcasts serve` registers them."""
    from deployments.definitions import deployments

    for deployment in deployments():
        deployment.apply()


def send_event_runs(event_ids: list[uuid.UUID]) -> list[FlowRun]:
    """Every run of the send-broadcast-event deployment for these events, oldest first."""
    wanted = {str(e) for e in event_ids}
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(SEND_EVENT_DEPLOYMENT)
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id])),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=200,  # this test's runs are the newest
        )
    return sorted((r for r in runs if r.parameters.get("broadcast_event_id") in wanted), key=lambda r: r.created)


def runs_for(event_id: uuid.UUID) -> list[FlowRun]:
    return send_event_runs([event_id])


def run_resume() -> Any:
    return resume_dispatch(return_state=True)


def set_state(run_id: str, state: Any) -> None:
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(uuid.UUID(run_id), state, force=True)


def claim(run_id: str) -> FlowRun:
    """Sets the run Pending as a worker or the dispatcher claims it (the server may refuse)."""
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(uuid.UUID(run_id), Pending())
        return client.read_flow_run(uuid.UUID(run_id))


def read_run(run_id: str | uuid.UUID) -> FlowRun:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(uuid.UUID(str(run_id)))


def start_scheduled(event_id: uuid.UUID, state: Any) -> str:
    """A send-broadcast-event run created in `state` (say, due a minute ago), with the webhook's key."""
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(SEND_EVENT_DEPLOYMENT)
        return str(client.create_flow_run_from_deployment(
            deployment.id, parameters={"broadcast_event_id": str(event_id)}, state=state,
            idempotency_key=idempotency_key(event_id)).id)


def written_ago(engine: Engine, seconds: float = 60, **service_options: Any) -> uuid.UUID:
    service_id = make_service(engine, **service_options)
    return make_event(engine, service_id, make_message(engine, service_id),
                      sent_at=utcnow() - timedelta(seconds=seconds))


def under_way(engine: Engine, event_id: uuid.UUID, *providers: str, acknowledged: tuple[str, ...] = ()) -> dict[str, uuid.UUID]:
    """Provider messages as a run leaves them when its process dies mid-send: `sending` with
    their identifiers (and Vodafone number); `acknowledged` ones already `returned-ack`."""
    with unit_of_work(engine) as session:
        found = {}
        for provider in (*providers, *acknowledged):
            message = dao.get_or_create_provider_message(session, event_id, provider, get_provider(provider).numbered)
            if provider in acknowledged:
                dao.append_status(session, message, RETURNED_ACK, route=f"{provider}-1-proxy", attempt=1)
            found[provider] = message.id
        return found


def resume_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.INFO and "resuming event" in r.getMessage()]


@pytest.mark.sqlite
def test_an_event_never_announced_is_dispatched_by_one_run_after_the_grace_period(db, configure, deployed, sim, caplog):
    configure(RESUME_GRACE_SECONDS=str(GRACE_SECONDS))
    _, _, event_id = make_alert(db)
    written = utcnow()
    with caplog.at_level(logging.INFO):
        state = run_resume()  # inside the grace period: its trigger may still be on its way
        assert (utcnow() - written).total_seconds() < GRACE_SECONDS, "the first resume ended after the grace period"
        assert state.is_completed() and runs_for(event_id) == []
        assert state.message == "resumed 0 events"

        time.sleep(max(0.0, GRACE_SECONDS + 0.1 - (utcnow() - written).total_seconds()))
        with serving():
            state = run_resume()
            [run] = runs_for(event_id)
            assert state.is_completed() and state.message == "resumed 1 event"
            assert run.idempotency_key == idempotency_key(event_id)  # a late webhook call finds this run
            assert wait_for_runs([str(run.id)], 60) == {str(run.id): "COMPLETED"}

        assert {p: s.status for p, s in statuses(db, event_id).items()} == dict.fromkeys(PROVIDERS, "returned-ack")
        assert run_resume().message == "resumed 0 events"  # nothing left to do
    assert [r.id for r in runs_for(event_id)] == [run.id]
    assert resume_lines(caplog) == [
        f"resuming event {event_id}: never dispatched: no provider message; never announced → run {run.id}"
    ]


def test_an_event_whose_run_is_still_sending_is_not_resumed(db, configure, deployed, sim, caplog):
    configure(CBC_PROXY_READ_TIMEOUT="10")
    event_id = written_ago(db)
    sim.fault("ee-1-proxy", delay_seconds=4, times=1)
    with serving():
        run_id = start_run(event_id)

        def ee_is_mid_call() -> bool:
            found = statuses(db, event_id)
            return "ee" in found and found["ee"].status == "sending" and \
                found.get("three") is not None and found["three"].status == "returned-ack"

        wait_until(ee_is_mid_call, 30, "ee's delayed call to be under way")
        with caplog.at_level(logging.INFO):
            state = run_resume()
        runs = [str(r.id) for r in runs_for(event_id)]
        # Before asserting: leaving `serving()` mid-call would leave ee's slot taken.
        assert wait_for_runs([run_id], 60) == {run_id: "COMPLETED"}
    assert state.is_completed() and state.message == "resumed 0 events"
    assert runs == [run_id]
    assert resume_lines(caplog) == [
        f"not resuming event {event_id}: ee not acknowledged (ee sending); run {run_id} is Running"
    ]
    assert {s.status for s in statuses(db, event_id).values()} == {"returned-ack"}


def test_two_resumers_at_once_create_one_run(db, deployed, caplog):
    event_id = written_ago(db)
    crashed = start_run(event_id)  # the webhook's run, whose process died
    set_state(crashed, Crashed(message="process died"))

    states: list[Any] = []
    with caplog.at_level(logging.INFO):
        threads = [in_thread(lambda: states.append(run_resume())) for _ in range(2)]
        for thread in threads:
            thread.join(60)

    assert len(states) == 2 and all(s.is_completed() for s in states)
    [first, resumed] = runs_for(event_id)
    assert str(first.id) == crashed
    assert resumed.idempotency_key == f"{idempotency_key(event_id)}:resume:{crashed}"
    assert resumed.parameters == {"broadcast_event_id": str(event_id)}
    assert resumed.name == f"send-broadcast-event-{event_id}"
    lines = resume_lines(caplog)  # each resumer either got that run or saw it live
    assert lines and all(line.endswith(f"run {resumed.id}") or f"run {resumed.id} is Scheduled" in line
                         for line in lines), lines


@pytest.mark.sqlite
def test_a_crashed_run_is_resumed_with_the_same_identifiers(db, deployed, sim, caplog):
    event_id = written_ago(db)
    crashed = start_run(event_id)
    set_state(crashed, Running())
    identifiers = under_way(db, event_id, "ee", "vodafone", acknowledged=("three",))

    with caplog.at_level(logging.INFO):
        assert run_resume().message == "resumed 0 events"  # still Running: its process may be alive
        set_state(crashed, Crashed(message="no heartbeat"))  # what the zombie automation does
        state = run_resume()
    assert state.is_completed() and state.message == "resumed 1 event"
    [_, resumed] = runs_for(event_id)
    assert resumed.idempotency_key == f"{idempotency_key(event_id)}:resume:{crashed}"
    reason = "ee, o2, vodafone not acknowledged (ee sending, o2 no provider message, vodafone sending)"
    assert resume_lines(caplog) == [
        f"not resuming event {event_id}: {reason}; run {crashed} is Running",
        f"resuming event {event_id}: {reason}; previous run {crashed} Crashed → run {resumed.id}",
    ]

    with serving():
        assert wait_for_runs([str(resumed.id)], 60) == {str(resumed.id): "COMPLETED"}
    after = statuses(db, event_id)
    assert {p: s.status for p, s in after.items()} == dict.fromkeys(PROVIDERS, "returned-ack")
    assert {p: after[p].identifier for p in identifiers} == identifiers
    called = {c["payload"]["identifier"] for c in sim.invocations()}
    assert called == {str(after[p].identifier) for p in ("ee", "o2", "vodafone")}  # three had acknowledged


def test_one_line_per_event_says_why_and_which_run(db, deployed, caplog):
    never = written_ago(db, seconds=120)
    failed_event = written_ago(db, seconds=60, providers=["ee"])
    under_way(db, failed_event, "ee")
    with unit_of_work(db) as session:
        dao.append_status(session, dao.get_provider_message(session, failed_event, "ee"), "returned-error", attempt=1)
    failed = start_run(failed_event)
    set_state(failed, Crashed(message="process died"))
    live_event = written_ago(db, seconds=90)
    live = start_run(live_event)  # Scheduled: a worker will take it

    with caplog.at_level(logging.INFO):
        state = run_resume()
    assert state.is_completed() and state.message == "resumed 2 events"
    [new_never] = runs_for(never)
    [_, new_failed] = runs_for(failed_event)
    assert resume_lines(caplog) == [
        f"resuming event {never}: never dispatched: no provider message; never announced → run {new_never.id}",
        f"not resuming event {live_event}: never dispatched: no provider message; run {live} is Scheduled",
        f"resuming event {failed_event}: ee not acknowledged (ee returned-error); "
        f"previous run {failed} Crashed → run {new_failed.id}",
    ]


def test_a_run_left_pending_is_crashed_after_30_s_and_its_event_sent_by_a_new_run(db, deployed, sim, caplog):
    event_id = written_ago(db)
    stuck = start_run(event_id)
    pending = claim(stuck).state  # the claimant then died before the run started: nobody runs it
    assert pending is not None and pending.is_pending()

    with caplog.at_level(logging.INFO):
        assert run_resume().message == "resumed 0 events"  # just claimed: it may yet start
        assert read_run(stuck).state.is_pending()
        time.sleep(max(0.0, (pending.timestamp + NOT_STARTED_WITHIN - utcnow()).total_seconds() + 0.5))
        state = run_resume()
    assert state.is_completed() and state.message == "resumed 1 event"
    [first, resumed] = runs_for(event_id)
    assert str(first.id) == stuck
    assert read_run(stuck).state.is_crashed()
    assert read_run(stuck).state.message.startswith("not started within 30 s; resumed by resume-dispatch run ")
    assert resumed.idempotency_key == f"{idempotency_key(event_id)}:resume:{stuck}" != first.idempotency_key
    reason = "never dispatched: no provider message"
    assert resume_lines(caplog) == [
        f"not resuming event {event_id}: {reason}; run {stuck} is Pending",
        f"resuming event {event_id}: {reason}; previous run {stuck} Pending, not started within 30 s, "
        f"now Crashed → run {resumed.id}",
    ]

    with serving():
        assert wait_for_runs([str(resumed.id)], 60) == {str(resumed.id): "COMPLETED"}
    assert {p: s.status for p, s in statuses(db, event_id).items()} == dict.fromkeys(PROVIDERS, "returned-ack")
    assert read_run(stuck).state.is_crashed()  # no process took the old run up beside the new one
    assert len(sim.invocations()) == len(PROVIDERS)


@pytest.mark.parametrize("make_state", [Scheduled, AwaitingRetry, Late], ids=["Scheduled", "AwaitingRetry", "Late"])
def test_a_run_left_scheduled_past_its_start_is_crashed_and_replaced(db, deployed, caplog, make_state):
    event_id = written_ago(db)
    unclaimed = start_scheduled(event_id, make_state(scheduled_time=utcnow() - timedelta(seconds=31)))

    with caplog.at_level(logging.INFO):
        state = run_resume()
    assert state.is_completed() and state.message == "resumed 1 event"
    [first, resumed] = runs_for(event_id)
    assert str(first.id) == unclaimed and read_run(unclaimed).state.is_crashed()
    assert resumed.idempotency_key == f"{idempotency_key(event_id)}:resume:{unclaimed}"
    assert resume_lines(caplog) == [
        f"resuming event {event_id}: never dispatched: no provider message; previous run {unclaimed} "
        f"{make_state().name}, not started within 30 s, now Crashed → run {resumed.id}",
    ]


def test_a_running_run_silent_past_its_heartbeats_is_crashed_and_replaced_and_a_beating_one_is_not(
        db, deployed, caplog, monkeypatch):
    """The zombie automation missed a dead run (its events late, its services down): resume judges
    silence itself, on the clock of the newest stored event. Prefect allows no heartbeat under
    30 s, so the allowance is cut to 8 s here, and the live run beats every 0.5 s (production's
    allowance: test_resume_silence.py)."""
    monkeypatch.setattr(flows.resume_dispatch, "heartbeat_silence", lambda settings: timedelta(seconds=8))
    dead_event, beating_event = written_ago(db), written_ago(db)
    under_way(db, dead_event, "ee", acknowledged=("three", "o2", "vodafone"))
    dead, beating = (start_scheduled(e, Scheduled()) for e in (dead_event, beating_event))
    for run_id in (dead, beating):
        claim(run_id)
        set_state(run_id, Running())
    dead_since = read_run(dead).state.timestamp
    stop = threading.Event()

    def beat() -> None:  # as the live run's process would, every 0.5 s instead of 30
        while not stop.wait(0.5):
            emit_event("prefect.flow-run.heartbeat", resource={"prefect.resource.id": f"prefect.flow-run.{beating}"})

    beats = in_thread(beat)
    try:
        # The store has moved 10 s past the dead run's last sign of life, carrying the live one's beats.
        wait_until(lambda: (last_stored(beating) or dead_since) - dead_since > timedelta(seconds=10), 60,
                   "the live run's heartbeats to be stored")
        with caplog.at_level(logging.INFO):
            state = run_resume()
    finally:
        stop.set()
        beats.join(10)
    assert state.is_completed() and state.message == "resumed 1 event"
    [first, resumed] = runs_for(dead_event)
    assert str(first.id) == dead and read_run(dead).state.is_crashed()
    message = read_run(dead).state.message
    assert message.startswith("no heartbeat for ") and "; resumed by resume-dispatch run " in message, message
    assert resumed.idempotency_key == f"{idempotency_key(dead_event)}:resume:{dead}"
    assert read_run(beating).state.is_running() and [str(r.id) for r in runs_for(beating_event)] == [beating]
    silent_for = message.removeprefix("no heartbeat for ").split(";")[0]
    assert sorted(resume_lines(caplog)) == sorted([
        f"resuming event {dead_event}: ee not acknowledged (ee sending); previous run {dead} Running, "
        f"no heartbeat for {silent_for}, now Crashed → run {resumed.id}",
        f"not resuming event {beating_event}: never dispatched: no provider message; run {beating} is Running",
    ])


def last_stored(run_id: str) -> datetime | None:
    """When the newest event about the run that Prefect has stored occurred."""
    from prefect.events.filters import EventFilter, EventResourceFilter

    with get_client(sync_client=True) as client:
        events = client.read_events(EventFilter(resource=EventResourceFilter(id=[f"prefect.flow-run.{run_id}"])),
                                    limit=1).events
    return events[0].occurred if events else None


def test_a_retry_scheduled_for_later_and_a_run_due_just_now_are_left_alone(db, deployed, caplog):
    later_event, now_event = written_ago(db), written_ago(db)
    later = start_scheduled(later_event, AwaitingRetry(scheduled_time=utcnow() + timedelta(minutes=5)))
    due = start_scheduled(now_event, Scheduled(scheduled_time=utcnow() - timedelta(seconds=20)))

    with caplog.at_level(logging.INFO):
        assert run_resume().message == "resumed 0 events"
    assert read_run(later).state.name == "AwaitingRetry" and read_run(due).state.is_scheduled()
    assert [r.id for r in runs_for(later_event)] == [uuid.UUID(later)]
    assert sorted(r.getMessage() for r in caplog.records if "not resuming" in r.getMessage()) == sorted([
        f"not resuming event {later_event}: never dispatched: no provider message; run {later} is AwaitingRetry",
        f"not resuming event {now_event}: never dispatched: no provider message; run {due} is Scheduled",
    ])


def test_a_run_claimed_or_started_after_it_was_read_is_not_crashed(db, deployed):
    overdue = utcnow() - timedelta(minutes=1)
    claimed = start_scheduled(written_ago(db), Scheduled(scheduled_time=overdue))
    started = start_scheduled(written_ago(db), Scheduled(scheduled_time=overdue))
    seen = {run_id: read_run(run_id) for run_id in (claimed, started)}  # what resume read: not started
    claim(claimed)  # a dispatcher claims it meanwhile
    claim(started)
    set_state(started, Running())  # and its process starts it

    with get_client(sync_client=True) as client:
        found = {run_id: take_over(client, run, "not started within 30 s") for run_id, run in seen.items()}
    assert {run_id: run.state.name for run_id, run in found.items() if run is not None} == {
        claimed: "Pending", started: "Running"}
    assert read_run(claimed).state.is_pending() and read_run(started).state.is_running()

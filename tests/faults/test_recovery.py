"""Recovery without an operator: `broadcasts serve` SIGKILLed at every point of a dispatch, the
app database's connections killed and the Prefect server restarted under way. Every network ends
acknowledged with the one identifier it was first given.

After a kill the send run stays Running with no process behind it. Its heartbeats stop, the
zombie-run automation (created by serve's bootstrap) marks it Crashed after two missed
heartbeats (production's three would add 30 s to the suite's longest test), and resume-dispatch, on its schedule in the restarted `serve`, starts a new send that
reuses each provider message, identifier and payload.

Resume-dispatch runs on the server's scheduler, which the session's Prefect server keeps off. So
this module has a server of its own, started as `broadcasts server` starts it (the service's
server settings, every service on), which the database-fault test restarts, and each test a
database of its own: resume looks at every unfinished event, and the shared test database holds
other tests' events on purpose.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId
from prefect.settings import PREFECT_API_URL, temporary_settings
from sqlalchemy import Engine, create_engine, text

from broadcasts.db import driver_url, get_engine, unit_of_work
from broadcasts.migrate import upgrade
from broadcasts.models import BroadcastProviderMessage
from deployments import server
from flows.resume_dispatch import FLOW_NAME as RESUME_FLOW
from flows.send_broadcast_event import DEPLOYMENT_NAME as SEND_EVENT_DEPLOYMENT
from broadcasts.provider_db_slot import LOCK_CLASS, lock_key
from tests.support.slots import held_slots
from deployments.bootstrap import bootstrap
from deployments.prefect_api import CLIENT_SETTINGS, client_settings
from flows.resume_dispatch import resume_key
from tests.conftest import backend
from tests.support.prefect_server import PrefectServer
from tests.support.postgres import throwaway_postgres_database
from tests.deployments.serving import serving, start_run
from tests.factories import make_alert
from tests.flows.helpers import prefect_events, statuses
from tests.support.polling import eventually, wait_until

pytestmark = [
    pytest.mark.faults, pytest.mark.prefect, pytest.mark.simulator, pytest.mark.long(165),
    pytest.mark.skipif(backend() != "postgresql", reason="a Prefect server of its own on PostgreSQL: this "
                       "test runs in the PostgreSQL pass of `make test`"),
    pytest.mark.timeout(480),  # a server and two `serve` starts, and a dead run's 60 s of silence
]

PROVIDERS = ["ee", "three", "o2", "vodafone"]
HEARTBEAT_SECONDS = float(CLIENT_SETTINGS["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"])  # Prefect's minimum
RESUME_INTERVAL_SECONDS = 10
# The longest a dead run's event waits: its heartbeats' silence, the automation's evaluation, one
# resume interval, the resumed run's start and its calls.
MISSED_HEARTBEATS = 2
RECOVERY_BOUND_SECONDS = MISSED_HEARTBEATS * HEARTBEAT_SECONDS + RESUME_INTERVAL_SECONDS + 45
READ_TIMEOUT_SECONDS = 60  # slow calls are still under way when `serve` dies
HANG_SECONDS = 90  # a proxy that has not answered by the kill
RETRY_SCALE = 60  # the first retry waits 60 s: the kill comes during it, after the second heartbeat


@pytest.fixture(scope="module")
def scheduling_server(environment: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """A Prefect server started as `broadcasts server` starts it, with its scheduler, on a
    PostgreSQL database of its own; this module's clients and `serve` processes use it. It is
    bootstrapped at once, as a production server long has been when a process dies: a run that
    starts within seconds of its automation's creation may beat the server loading it."""
    with throwaway_postgres_database("prefect_recovery") as url:
        # `broadcasts server`'s settings, its scheduler included
        prefect = PrefectServer(tmp_path_factory.mktemp("prefect-recovery"), server.server_environment(os.environ),
                                database_url=url)
        saved = os.environ.get("PREFECT_API_URL")
        try:
            prefect.start()
            os.environ["PREFECT_API_URL"] = prefect.api
            with temporary_settings(updates={PREFECT_API_URL: prefect.api}):
                with client_settings():
                    bootstrap(missed_heartbeats=MISSED_HEARTBEATS)
                yield prefect
        finally:
            if saved is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = saved
            prefect.stop()


@pytest.fixture
def db(scheduling_server: PrefectServer, configure) -> Iterator[Engine]:  # type: ignore[no-untyped-def]
    """A database of its own, and the settings `serve` runs with: resume every few seconds, slow
    proxy calls waited for, and no link test during the test."""
    with throwaway_postgres_database("recovery_test") as url:
        engine = get_engine(url)
        upgrade(engine)
        configure(DATABASE_URL=url, RESUME_INTERVAL_SECONDS=str(RESUME_INTERVAL_SECONDS), RESUME_GRACE_SECONDS="2",
                  CRASHED_AFTER_MISSED_HEARTBEATS=str(MISSED_HEARTBEATS),
                  CBC_PROXY_READ_TIMEOUT=str(READ_TIMEOUT_SECONDS), LINK_TEST_CRON="0 0 1 1 *")
        try:
            yield engine
        finally:
            engine.dispose()


def test_serve_killed_at_every_point_of_a_send_finishes_every_network_with_its_first_identifier(
        db, sim, configure):
    """One event, each network at a different point when the whole `serve` process group dies:
    ee's call not yet answered (the proxy is still working on it), o2's call taken by the network
    but its ACK not yet stored, three between two attempts, vodafone before its call (its slot
    held by someone else, as a link test would)."""
    configure(BROADCAST_RETRY_DELAY_SCALE=str(RETRY_SCALE))
    started, began = time.monotonic(), utcnow()
    _, _, event_id = make_alert(db)
    sim.fault("ee-1-proxy", delay_seconds=HANG_SECONDS, times=1)
    sim.fault("o2-1-proxy", answer_delay_seconds=HANG_SECONDS, times=1)
    sim.fault("three-1-proxy", http_status=500, times=2)
    sim.fault("three-2-proxy", http_status=500, times=2)
    vodafone_slot = db.connect()  # the test holds vodafone's slot until the kill is over
    vodafone_slot.execute(text(f"SELECT pg_advisory_lock({LOCK_CLASS}, {lock_key('vodafone')})"))
    vodafone_slot.commit()

    def at_every_point() -> bool:
        calls = Counter((c["function"], c["outcome"]) for c in sim.invocations())
        return (calls[("ee-1-proxy", "pending")] == 1 and calls[("o2-1-proxy", "ok")] == 1
                and calls[("three-2-proxy", "http_status")] == 2 and "vodafone" in statuses(db, event_id))

    with serving() as served:
        run_id = start_run(event_id)
        wait_until(at_every_point, 120, "every network at its kill point",
                   lambda: served.text()[-5000:], every=0.5)
        # The worst moment: resume-dispatch itself claimed by this process and not yet running,
        # so it has sent no heartbeat. Any moment within three's first retry wait will do.
        caught = bool(eventually(lambda: resume_runs_in("PENDING"), 15, every=0.2))
        # A run that has been beating: its second heartbeat, 30 s in, starts the automation's watch
        # even if the server had not yet loaded the new automation for the first (seen in CI).
        wait_until(lambda: heartbeats(run_id, began) >= 2, HEARTBEAT_SECONDS + 15, "the run's second heartbeat",
                   lambda: runs_summary(began), every=0.5)
        assert at_every_point(), sim.invocations()
        before = sim.invocations()
        vodafone_identifier = str(statuses(db, event_id)["vodafone"].identifier)
        group = descendants(served.process.pid)
        killed_at = utcnow()
        os.killpg(served.process.pid, signal.SIGKILL)
        outside = [pid for pid, session in group.items() if session != served.process.pid]
        for pid in outside:  # a process in a session of its own would outlive the group: no such test
            os.kill(pid, signal.SIGKILL)
        served.process.wait(10)
        time.sleep(0.5)
        alive = [pid for pid in [served.process.pid, *group] if is_alive(pid)]
        assert alive == [], f"still running after SIGKILL: {alive}"
        assert outside == [], f"processes outside serve's process group: {outside}"
        assert {s.status for s in statuses(db, event_id).values()} <= {"sending", "returned-error"}
    vodafone_slot.invalidate()  # its holder ends: the lock goes with its connection (closed, not pooled)
    vodafone_slot.close()
    print(f"\nserve killed with {len(group)} process(es) under it (flow runs included), "
          f"{'with' if caught else 'without'} a resume-dispatch run starting")
    first = {c["function"].split("-")[0]: sent_as(c) for c in before}
    assert sorted(first) == ["ee", "o2", "three"], before  # vodafone was not called

    with serving() as served:
        wait_until(lambda: all_acknowledged(db, event_id), 240,
                   "every network to acknowledge", lambda: served.text()[-3000:] + runs_summary(began), every=0.5)

    calls = sim.invocations()
    after = [c for c in calls if parse(c["received_at"]) > killed_at and c["outcome"] == "ok"]
    recovery = (max(parse(c["responded_at"]) for c in after) - killed_at).total_seconds()
    found = statuses(db, event_id)
    for provider in PROVIDERS:
        assert found[provider].status == "returned-ack"
        sent = {sent_as(c) for c in calls if c["function"].startswith(f"{provider}-")}
        assert len(sent) == 1 and {i for i, _ in sent} == {str(found[provider].identifier)}, \
            f"{provider} was sent {sent}, stored {found[provider].identifier}"
        assert sent == {first.get(provider, (vodafone_identifier, None))} or provider == "vodafone", \
            f"{provider} was sent {sent}, first {first[provider]}"
    assert str(found["vodafone"].identifier) == vodafone_identifier
    repeats = {point: sum(c["function"].startswith(f"{provider}-") for c in calls)
               for point, provider in [("during the call", "ee"), ("after the call, before its ACK", "o2"),
                                       ("between retries", "three"), ("before the call", "vodafone")]}

    with get_client(sync_client=True) as client:
        crashed = client.read_flow_run(uuid.UUID(run_id))
        deployment = client.read_deployment_by_name(SEND_EVENT_DEPLOYMENT)
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id])))
    assert crashed.state is not None and crashed.state.type.value == "CRASHED", crashed.state
    assert f"no heartbeat for {MISSED_HEARTBEATS * HEARTBEAT_SECONDS:g} s" in (crashed.state.message or ""), crashed.state.message  # the zombie-run automation
    [resumed] = [r for r in runs if str(r.id) != run_id]
    assert resumed.idempotency_key == resume_key(event_id, run_id)  # started by resume-dispatch, nobody else

    crashed_after = (crashed.state.timestamp - killed_at).total_seconds()
    print(f"recovery (SIGKILL -> last ACK): {recovery:.1f} s (bound {RECOVERY_BOUND_SECONDS:g} s); "
          f"run marked Crashed {crashed_after:.1f} s after the kill; proxy calls per kill point, all with "
          f"the network's one identifier: {repeats}; test {time.monotonic() - started:.0f} s")
    assert recovery <= RECOVERY_BOUND_SECONDS


def test_database_connections_killed_and_prefect_restarted_mid_dispatch_lose_nothing(db, sim, scheduling_server):
    """Four events under way (every primary slow) when every connection to the app database is
    terminated and then the Prefect server restarts: each (event, network) still ends acknowledged
    with one identifier, and no provider slot is left taken (a slot whose connection was killed
    went with it)."""
    started = time.monotonic()
    events = [make_alert(db)[2] for _ in range(4)]
    for provider in PROVIDERS:
        sim.fault(f"{provider}-1-proxy", delay_seconds=1.5, times=len(events))

    with serving() as served:
        for event_id in events:
            start_run(event_id)
        wait_until(lambda: len(sim.invocations()) >= 6, 120, "the sends to be under way",
                   lambda: served.text()[-5000:], every=0.5)
        killed = terminate_connections(db)
        calls_at_fault = len(sim.invocations())
        scheduling_server.stop()
        time.sleep(7)  # sends under way finish, and record, while Prefect is away
        scheduling_server.start()
        wait_until(lambda: all(all_acknowledged(db, e) for e in events), 300, "every event to be acknowledged",
                   lambda: served.text()[-3000:] + runs_summary(datetime.fromtimestamp(0, timezone.utc)), every=0.5)
        # A send records its outcome, then gives its slot back: a moment after the last ACK.
        eventually(lambda: not held_slots(db), 5, every=0.1)
        held = held_slots(db)
        slot_lines = "\n".join(line for line in served.text().splitlines() if " slot" in line)

    calls = sim.invocations()
    for event_id in events:
        found = statuses(db, event_id)
        for provider in PROVIDERS:
            sent = {sent_as(c) for c in calls if c["function"].startswith(f"{provider}-")
                    and c["payload"]["identifier"] == str(found[provider].identifier)}
            assert len(sent) == 1, f"{provider} got {sent} for event {event_id}"
    with unit_of_work(db) as session:
        messages = session.query(BroadcastProviderMessage).count()
    assert messages == len(events) * len(PROVIDERS)  # one identifier per (event, network), none lost
    identifiers = Counter(c["payload"]["identifier"] for c in calls)
    assert len(identifiers) == messages, identifiers
    with get_client(sync_client=True) as client:
        runs = Counter(r.state_name for r in client.read_flow_runs(flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[client.read_deployment_by_name(SEND_EVENT_DEPLOYMENT).id]))))
    assert held == [], f"slots still taken: {held}\n{slot_lines}"
    print(f"{killed} app database connection(s) terminated and the Prefect server restarted with "
          f"{calls_at_fault} of {len(events) * len(PROVIDERS)} sends under way; {len(calls)} proxy calls "
          f"for {messages} messages; send runs {dict(runs)}; every event acknowledged {time.monotonic() - started:.0f} s after the start")


def heartbeats(run_id: str, since: datetime) -> int:
    return sum(e["resource"]["prefect.resource.id"] == f"prefect.flow-run.{run_id}"
               for e in prefect_events("prefect.flow-run.heartbeat", since=since))


def terminate_connections(engine: Engine) -> int:
    """Kills every session on the engine's database but this one's: what a failover of the
    database server does to its clients."""
    admin = create_engine(driver_url(engine.url.set(database="postgres").render_as_string(hide_password=False)),
                          isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            return len(connection.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name AND pid <> pg_backend_pid()"),
                {"name": engine.url.database}).all())
    finally:
        admin.dispose()


def runs_summary(since: datetime) -> str:
    """The runs that are not done or that crashed, with their heartbeats: what a stall is made of."""
    beats = Counter(e["resource"]["prefect.resource.id"] for e in prefect_events("prefect.flow-run.heartbeat", since))
    with get_client(sync_client=True) as client:
        flows = {f.id: f.name for f in client.read_flows()}
        runs = client.read_flow_runs(limit=200)
    lines = Counter(f"{flows.get(r.flow_id)} {r.state_name}" for r in runs)
    stalled = [f"{flows.get(r.flow_id)} {r.id} {r.state_name} created {r.created} started {r.start_time} "
               f"heartbeats {beats[f'prefect.flow-run.{r.id}']}"
               for r in runs if r.state_name in ("Submitting", "Pending", "Running", "Crashed")]
    return "\nflow runs: " + ", ".join(f"{n} {line}" for line, n in sorted(lines.items())) + "\n" + "\n".join(stalled)


def resume_runs_in(state_type: str) -> bool:
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(f"{RESUME_FLOW}/{RESUME_FLOW}")
        return any(r.state_type is not None and r.state_type.value == state_type for r in client.read_flow_runs(
            flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id]))))


def sent_as(call: dict) -> tuple[str, str | None]:
    """What identifies the message to its network: the identifier, and Vodafone's number."""
    return call["payload"]["identifier"], call["payload"].get("message_number")


def all_acknowledged(engine: Engine, event_id: uuid.UUID) -> bool:
    found = statuses(engine, event_id)
    return all(p in found and found[p].status == "returned-ack" for p in PROVIDERS)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def parse(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp)


def proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, session, …)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2:].split()


def descendants(root: int) -> dict[int, int]:
    """Every process under `root`, with its session id."""
    parents: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := proc_stat(int(entry.name))) is not None:
            parents[int(entry.name)] = (int(fields[1]), int(fields[3]))
    found: dict[int, int] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, session) in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = session
                frontier.append(pid)
    return found


def is_alive(pid: int) -> bool:
    fields = proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")

"""The provider slot (tasks/provider_limits.py) on the test database: mutual exclusion within a
process and across processes, a queue of live holders never taken for a stuck slot, a holder
that died freeing it at once, and a slot that is stuck never keeping an alert from a network.
On PostgreSQL it is the advisory lock (broadcasts/provider_db_slot.py), on SQLite the file lock; no
Prefect server is involved except where the page (a Prefect event) is checked."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest
from sqlalchemy import Engine, func, select

from broadcasts import dispatch
from broadcasts.cbc_proxy import get_proxy
from broadcasts.models import utcnow
from broadcasts.settings import get_settings
from tasks.provider_limits import SLOT_STUCK_EVENT, slot_for
from tests.conftest import PROJECT_ROOT, backend
from tests.factories import make_alert
from tests.flows.helpers import in_thread, prefect_events, run_event, statuses
from tests.support.polling import eventually, wait_until
from tests.support.slots import held_slots, slot_holders

pytestmark = pytest.mark.long(50)
postgresql_only = pytest.mark.skipif(backend() != "postgresql", reason="the advisory lock is PostgreSQL's")


def send(engine: Engine, event_id, timeout: float = 30, slot=None):  # type: ignore[no-untyped-def]
    settings = get_settings()
    return dispatch.send_once(engine, get_proxy(settings), event_id, "ee", headline="h", enabled=["ee"],
                              provider_slot=slot or (lambda: slot_for(settings, "ee", timeout)))


def at_once(engine: Engine, events: list, **options) -> list[BaseException]:  # type: ignore[no-untyped-def]
    """Sends each event to ee from a thread of its own, all starting together; the errors raised."""
    barrier = threading.Barrier(len(events))
    errors: list[BaseException] = []

    def one(event_id):  # type: ignore[no-untyped-def]
        barrier.wait(10)
        try:
            send(engine, event_id, **options)
        except BaseException as error:  # reported by the caller, not lost in the thread
            errors.append(error)

    for thread in [in_thread(lambda e=e: one(e)) for e in events]:
        thread.join(60)
    return errors


def assert_no_two_calls_overlap(calls: list[dict]) -> None:
    calls = sorted(calls, key=lambda c: c["received_at"])
    for earlier, later in zip(calls, calls[1:]):
        assert later["received_at"] >= earlier["responded_at"], (
            f"{later['payload']['identifier']} reached ee while {earlier['payload']['identifier']} was in flight")


def test_no_two_sends_to_one_provider_overlap(configure, engine, sim):
    """Three sends to ee at once: the slot serialises their proxy calls (checked on the
    simulator's record of when each call arrived and was answered)."""
    configure(ENABLED_CBCS="ee")
    sim.fault("ee-1-proxy", delay_seconds=0.3, times=3)
    assert at_once(engine, [make_alert(engine)[2] for _ in range(3)]) == []
    calls = sim.invocations()
    assert len(calls) == 3 and all(c["outcome"] == "ok" for c in calls)
    assert_no_two_calls_overlap(calls)


def test_the_slot_needs_no_prefect_api(configure, engine, sim, monkeypatch):
    """Nothing answers at PREFECT_API_URL: the slot is taken and given back all the same, at once."""
    configure(ENABLED_CBCS="ee")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # the discard port: refused
    _, _, event_id = make_alert(engine)
    begun = time.monotonic()
    assert send(engine, event_id).status == "returned-ack"
    assert time.monotonic() - begun < 5
    assert "slot_stuck" not in (statuses(engine, event_id)["ee"].history[-1].detail or {})


@contextmanager
def timed(slot, held: list):  # type: ignore[no-untyped-def]
    """The real slot, noting when its body ran and the note it yielded."""
    with slot as note:
        begun = time.monotonic()
        try:
            yield note
        finally:
            held.append((begun, time.monotonic(), note))


def test_sends_queued_behind_a_slow_network_wait_their_turn_and_none_is_taken_for_stuck(configure, engine, sim):
    """Both routes time out, so each send holds the slot about 3 s; the third waits about 6 s,
    longer than the 5 s a waiter gives a holder that shows no sign of moving. Live holders are not
    stuck: the three hold the slot one after the other, and none goes without it."""
    # One CBC: two routes, so a send that times out on both holds the slot 3 s.
    configure(ENABLED_CBCS="ee", CBC_B_PROVIDERS="", CBC_PROXY_CONNECT_TIMEOUT="0.5", CBC_PROXY_READ_TIMEOUT="1.5")
    for route in ("ee-1-proxy", "ee-2-proxy"):
        sim.fault(route, delay_seconds=3, times=3)
    events = [make_alert(engine)[2] for _ in range(3)]
    held: list = []
    settings = get_settings()
    errors = at_once(engine, events, slot=lambda: timed(slot_for(settings, "ee", 5), held))
    assert [type(e).__name__ for e in errors] == ["AllRoutesFailed"] * 3
    assert [note for _, _, note in held] == [None, None, None], "a send went without the slot"
    spans = sorted(held)
    for (_, ended, _), (begun, _, _) in zip(spans, spans[1:]):
        assert begun >= ended, "two sends to ee held the slot at once"
    for event_id in events:
        assert all("slot_stuck" not in (row.detail or {}) for row in statuses(engine, event_id)["ee"].history)


SEND_ELSEWHERE = """
import sys, uuid
from broadcasts import dispatch
from broadcasts.cbc_proxy import get_proxy
from broadcasts.db import get_engine
from broadcasts.settings import get_settings
from tasks.provider_limits import slot_for
settings = get_settings()
print("ready", flush=True)
sys.stdin.readline()
dispatch.send_once(get_engine(settings.database_url), get_proxy(settings), uuid.UUID(sys.argv[1]), "ee",
                   headline="h", enabled=["ee"], provider_slot=lambda: slot_for(settings, "ee", float(sys.argv[2])))
"""


@postgresql_only
def test_a_send_from_another_process_gets_the_slot_while_this_process_has_a_queue(configure, engine, sim, tmp_path):
    """Fourteen sends here (0.5 s each) and one from another process that gives a holder that does
    not move 3 s: the other process's send is served while this process's queue goes on (the
    database wakes a waiter the moment the lock is given back), and no two calls to ee overlap."""
    configure(ENABLED_CBCS="ee")
    sim.fault("ee-1-proxy", delay_seconds=0.5, times=15)
    here = [make_alert(engine)[2] for _ in range(14)]
    _, _, elsewhere = make_alert(engine)
    with open(tmp_path / "stderr", "w") as stderr:
        other = subprocess.Popen([sys.executable, "-c", SEND_ELSEWHERE, str(elsewhere), "3"], cwd=PROJECT_ROOT,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        assert other.stdout and other.stdout.readline().strip() == "ready", (tmp_path / "stderr").read_text()
        queue = in_thread(lambda: at_once(engine, here))
        assert eventually(sim.invocations, 10), "the queue here did not start"
        assert other.stdin
        other.stdin.write("go\n")
        other.stdin.flush()
        queue.join(60)
        assert other.wait(60) == 0, (tmp_path / "stderr").read_text()[-3000:]
    finally:
        other.kill()

    theirs = statuses(engine, elsewhere)["ee"]
    assert theirs.status == "returned-ack"
    assert "slot_stuck" not in (theirs.history[-1].detail or {}), theirs.history[-1].detail
    calls = sim.invocations()
    assert len(calls) == 15
    assert_no_two_calls_overlap(calls)
    assert sorted(calls, key=lambda c: c["received_at"])[-1]["payload"]["identifier"] != str(theirs.identifier), (
        "the other process's send waited until this process's whole queue was done")


HOLD_AND_HANG = """
import time
from broadcasts.settings import get_settings
from tasks.provider_limits import slot_for
with slot_for(get_settings(), "ee", 600) as note:
    assert note is None
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_holder_that_died_frees_the_slot_at_once_and_a_live_one_that_hangs_is_passed_over(
        configure, engine, sim, caplog, slot_pages):
    """A process holding the slot and hanging in its call keeps it for the bound; then the send
    goes without it, records and logs why. SIGKILLed, its slot is free at once: no lease to wait out."""
    configure(ENABLED_CBCS="ee")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_AND_HANG], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                              env=os.environ.copy(), text=True)
    try:
        assert holder.stdout and holder.stdout.readline().strip() == "held"
        _, _, event_id = make_alert(engine)
        held: list = []
        settings = get_settings()
        begun = time.monotonic()
        assert send(engine, event_id, slot=lambda: timed(slot_for(settings, "ee", 2), held)).status == "returned-ack"
        waited = held[0][0] - begun
        assert 2 <= waited < 4, waited
        note = statuses(engine, event_id)["ee"].history[-1].detail["slot_stuck"]
        assert "the ee slot still held after 2 s" in note and "sent without the slot" in note, note
        assert any(r.levelname == "ERROR" and "the ee slot still held" in r.getMessage() for r in caplog.records)
        pages = wait_until(lambda: slot_pages, 5, "the slot-stuck page")
        assert [(p["event"], p["payload"]) for p in pages] == [(SLOT_STUCK_EVENT, {"provider": "ee", "detail": note})]
    finally:
        holder.kill()  # SIGKILL: no release
        holder.wait(10)
    _, _, second = make_alert(engine)
    begun = time.monotonic()
    send(engine, second, timeout=30)
    assert time.monotonic() - begun < 2
    assert "slot_stuck" not in (statuses(engine, second)["ee"].history[-1].detail or {})


@postgresql_only
def test_a_send_arriving_after_a_holder_elsewhere_has_held_the_bound_passes_it_at_once(configure, engine, sim):
    """Stuck is the holder's own time, on the database's clock: sends queued behind one stuck
    holder do not each wait a whole bound again."""
    configure(ENABLED_CBCS="ee")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_AND_HANG], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                              env=os.environ.copy(), text=True)
    try:
        assert holder.stdout and holder.stdout.readline().strip() == "held"
        time.sleep(2.2)  # it has now held the slot longer than the bound below
        _, _, event_id = make_alert(engine)
        held: list = []
        settings = get_settings()
        begun = time.monotonic()
        send(engine, event_id, slot=lambda: timed(slot_for(settings, "ee", 2), held))
        waited = held[0][0] - begun
    finally:
        holder.kill()
        holder.wait(10)
    assert held[0][2] is not None and "still held after 2 s" in held[0][2]
    assert waited < 1.8, f"waited {waited:.1f} s behind a holder already past the bound"


@postgresql_only
def test_a_body_that_raises_gives_the_slot_back(configure, engine):
    settings = get_settings()
    with pytest.raises(RuntimeError):
        with slot_for(settings, "ee", 5):
            raise RuntimeError("the call went wrong")
    assert held_slots(engine) == []


def test_a_holder_stuck_in_its_call_past_the_bound_does_not_keep_the_network_from_the_next_send(configure, engine):
    """A send in this process holding the slot far longer than any live call can (its body
    blocked, say) is passed over once it has held it for the bound: the send queued behind it goes
    ahead without the slot within about a bound, saying why, instead of waiting for it."""
    settings = get_settings()
    entered, let_go = threading.Event(), threading.Event()

    def stuck() -> None:
        with slot_for(settings, "ee", 2) as note:
            assert note is None
            entered.set()
            let_go.wait(30)

    holder = in_thread(stuck)
    assert entered.wait(10)
    begun = time.monotonic()
    try:
        with slot_for(settings, "ee", 2) as note:
            waited = time.monotonic() - begun
    finally:
        let_go.set()
        holder.join(30)
    assert note is not None and "sent without the slot" in note, note
    assert waited < 4, waited
    with slot_for(settings, "ee", 2) as note:  # the stuck one ended: the slot is free again
        assert note is None


@postgresql_only
def test_a_slot_whose_connection_is_killed_during_the_call_does_not_fail_the_send(configure, engine, sim, caplog):
    """The database ends the slot's connection mid-call (a failover, say): the lock went with it,
    the send's outcome is recorded all the same, and the next send takes the slot at once."""
    configure(ENABLED_CBCS="ee")
    _, _, event_id = make_alert(engine)
    settings = get_settings()

    @contextmanager
    def killed_mid_call():  # type: ignore[no-untyped-def]
        with slot_for(settings, "ee", 30) as note:
            with engine.connect() as admin:
                [holder] = slot_holders(admin, "ee")  # in this test's database only
                holders = admin.execute(select(func.pg_terminate_backend(holder))).scalar()
            assert holders
            yield note

    assert send(engine, event_id, slot=killed_mid_call).status == "returned-ack"
    assert any("connection was lost during the call" in r.getMessage() for r in caplog.records)
    _, _, second = make_alert(engine)
    begun = time.monotonic()
    send(engine, second)
    assert time.monotonic() - begun < 2


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.sqlite
def test_a_stuck_slot_does_not_keep_an_alert_from_the_network_and_pages(configure, engine, sim):
    """Through the flow: a slot held by a live holder that never gives it back; the alert goes
    out at the bound, its history says why, and the slot-stuck event reaches Prefect."""
    configure(ENABLED_CBCS="three", CBC_PROXY_CONNECT_TIMEOUT="0.5", CBC_PROXY_READ_TIMEOUT="0.5")
    slot_wait = 4 * (0.5 + 0.5) + 10  # four routes
    settings = get_settings()
    started = utcnow()
    entered, let_go = threading.Event(), threading.Event()

    def leak() -> None:
        with slot_for(settings, "three", 600):
            entered.set()
            let_go.wait(120)

    holder = threading.Thread(target=leak)
    holder.start()
    try:
        assert entered.wait(10)
        _, _, event_id = make_alert(engine)
        state = run_event(event_id)
        took = (utcnow() - started).total_seconds()
    finally:
        let_go.set()
        holder.join(30)
    assert state.is_completed(), state.message
    assert slot_wait <= took < slot_wait + 5, f"the alert took {took:.1f} s; the slot wait is {slot_wait} s"
    three = statuses(engine, event_id)["three"]
    assert three.status == "returned-ack" and len(sim.invocations()) == 1
    assert "sent without the slot" in three.history[-1].detail["slot_stuck"]
    events = eventually(lambda: prefect_events(SLOT_STUCK_EVENT, started), 10)  # events arrive asynchronously
    assert [e["resource"]["prefect.resource.name"] for e in events] == ["three"]

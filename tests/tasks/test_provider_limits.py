"""The cbc-<provider> slot against a real Prefect server: mutual exclusion, in the domain and in
the task, within a process and across processes; a queue of live holders is never taken for a
stuck slot; and a leaked slot, or one whose holder died, never keeps an alert from a network."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager

import httpx
import pytest
from prefect.client.orchestration import get_client

from broadcasts import dispatch
from broadcasts.cbc_proxy import get_proxy
from broadcasts.models import utcnow
from broadcasts.settings import get_settings
from tasks.provider_limits import SLOT_STUCK_EVENT, ensure_limits, limit_name, provider_slot
from tasks.slot_api import holder_record_name
from tests.conftest import PROJECT_ROOT
from tests.factories import make_alert
from tests.flows.helpers import in_thread, prefect_events, run_event, statuses
from tests.support.polling import eventually

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_no_two_sends_to_one_provider_overlap(configure, engine, sim):
    """Three sends to ee at once: the slot serialises their proxy calls (checked on the
    simulator's record of when each call arrived and was answered)."""
    configure(ENABLED_CBCS="ee")
    ensure_limits(["ee"])
    sim.fault("ee-1-proxy", delay_seconds=0.3, times=3)
    events = [make_alert(engine)[2] for _ in range(3)]
    proxy = get_proxy(get_settings())
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def send(event_id):  # type: ignore[no-untyped-def]
        barrier.wait(10)
        try:
            dispatch.send_once(engine, proxy, event_id, "ee", headline="h", enabled=["ee"],
                                      provider_slot=lambda: provider_slot("ee", 30))
        except BaseException as error:  # reported below, not lost in the thread
            errors.append(error)

    threads = [in_thread(lambda e=e: send(e)) for e in events]
    for thread in threads:
        thread.join(60)
    assert errors == []
    calls = sorted(sim.invocations(), key=lambda c: c["received_at"])
    assert len(calls) == 3 and all(c["outcome"] == "ok" for c in calls)
    for earlier, later in zip(calls, calls[1:]):
        assert later["received_at"] >= earlier["responded_at"], (
            f"{later['payload']['identifier']} reached ee while {earlier['payload']['identifier']} was in flight"
        )


def occupy_forever(provider: str) -> str:
    """A lease nobody renews or releases, far longer than any test: a leaked slot."""
    ensure_limits([provider])
    with get_client(sync_client=True) as client:
        return client.increment_concurrency_slots_with_lease(
            names=[limit_name(provider)], slots=1, mode="concurrency", lease_duration=24 * 3600
        ).json()["lease_id"]


def test_a_leaked_slot_does_not_keep_an_alert_from_the_network(configure, engine, sim, caplog):
    configure(ENABLED_CBCS="three", CBC_PROXY_CONNECT_TIMEOUT="0.5", CBC_PROXY_READ_TIMEOUT="0.5")
    slot_wait = 4 * (0.5 + 0.5) + 10  # four routes
    started = utcnow()
    leaked = occupy_forever("three")
    try:
        _, _, event_id = make_alert(engine)
        state = run_event(event_id)
        took = (utcnow() - started).total_seconds()
    finally:
        with get_client(sync_client=True) as client:
            client.release_concurrency_slots_with_lease(leaked)

    assert state.is_completed(), state.message
    assert took < slot_wait + 5, f"the alert took {took:.1f} s; the slot wait is {slot_wait} s"
    three = statuses(engine, event_id)["three"]
    assert three.status == "returned-ack" and len(sim.invocations()) == 1
    stuck = three.history[-1].detail["slot_stuck"]
    assert f"cbc-three still taken after {slot_wait:g} s" in stuck and "sent without the slot" in stuck
    assert any(r.levelname == "ERROR" and "cbc-three still taken" in r.getMessage() for r in caplog.records)
    deadline = time.monotonic() + 10  # events reach the server asynchronously
    while not (events := prefect_events(SLOT_STUCK_EVENT, started)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [e["resource"]["prefect.resource.name"] for e in events] == ["three"]
    # The stale slot was freed: the next send takes it at once.
    _, _, second = make_alert(engine)
    begun = time.monotonic()
    assert run_event(second).is_completed()
    assert time.monotonic() - begun < 5
    assert "slot_stuck" not in (statuses(engine, second)["three"].history[-1].detail or {})


@pytest.mark.sqlite
def test_the_task_holds_the_slot_so_three_alerts_to_one_network_never_overlap(configure, engine, sim):
    configure(ENABLED_CBCS="ee")
    sim.fault("ee-1-proxy", delay_seconds=0.3, times=3)
    events = [make_alert(engine)[2] for _ in range(3)]
    barrier = threading.Barrier(3)
    states = []

    def send(event_id):  # type: ignore[no-untyped-def]
        barrier.wait(10)
        states.append(run_event(event_id))

    threads = [in_thread(lambda e=e: send(e)) for e in events]
    for thread in threads:
        thread.join(60)
    assert len(states) == 3 and all(s.is_completed() for s in states), [s.message for s in states]
    calls = sorted(sim.invocations(), key=lambda c: c["received_at"])
    assert len(calls) == 3
    for earlier, later in zip(calls, calls[1:]):
        assert later["received_at"] >= earlier["responded_at"], (
            f"{later['payload']['identifier']} reached ee while {earlier['payload']['identifier']} was in flight"
        )


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
    longer than the 5 s a waiter gives a holder that shows no sign of life. Live holders are not
    stuck: the three hold the slot one after the other, and none goes without it."""
    # One CBC: two routes, so a send that times out on both holds the slot 3 s.
    configure(ENABLED_CBCS="ee", CBC_B_PROVIDERS="", CBC_PROXY_CONNECT_TIMEOUT="0.5", CBC_PROXY_READ_TIMEOUT="1.5")
    ensure_limits(["ee"])
    for route in ("ee-1-proxy", "ee-2-proxy"):
        sim.fault(route, delay_seconds=3, times=3)
    events = [make_alert(engine)[2] for _ in range(3)]
    proxy = get_proxy(get_settings())
    barrier = threading.Barrier(3)
    held: list = []
    errors: list[BaseException] = []

    def send(event_id):  # type: ignore[no-untyped-def]
        barrier.wait(10)
        try:
            dispatch.send_once(engine, proxy, event_id, "ee", headline="h", enabled=["ee"],
                                      provider_slot=lambda: timed(provider_slot("ee", 5), held))
        except BaseException as error:
            errors.append(error)

    threads = [in_thread(lambda e=e: send(e)) for e in events]
    for thread in threads:
        thread.join(60)
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
from tasks.provider_limits import provider_slot
settings = get_settings()
print("ready", flush=True)
sys.stdin.readline()
dispatch.send_once(get_engine(settings.database_url), get_proxy(settings), uuid.UUID(sys.argv[1]), "ee",
                          headline="h", enabled=["ee"], provider_slot=lambda: provider_slot("ee", float(sys.argv[2])))
"""


def test_a_send_from_another_process_gets_the_slot_while_this_process_has_a_queue(configure, engine, sim, tmp_path):
    """Fourteen sends here (0.5 s each) and one from another process that gives a silent holder
    3 s: the other process's send sees the slot move, takes it before this process's queue is
    done, and no two calls to ee overlap."""
    configure(ENABLED_CBCS="ee")
    ensure_limits(["ee"])
    sim.fault("ee-1-proxy", delay_seconds=0.5, times=15)
    here = [make_alert(engine)[2] for _ in range(14)]
    _, _, elsewhere = make_alert(engine)
    with open(tmp_path / "stderr", "w") as stderr:
        other = subprocess.Popen([sys.executable, "-c", SEND_ELSEWHERE, str(elsewhere), "3"], cwd=PROJECT_ROOT,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        assert other.stdout and other.stdout.readline().strip() == "ready", (tmp_path / "stderr").read_text()
        proxy = get_proxy(get_settings())
        barrier = threading.Barrier(len(here))

        def send(event_id):  # type: ignore[no-untyped-def]
            barrier.wait(10)
            dispatch.send_once(engine, proxy, event_id, "ee", headline="h", enabled=["ee"],
                                      provider_slot=lambda: provider_slot("ee", 30))

        threads = [in_thread(lambda e=e: send(e)) for e in here]
        assert eventually(sim.invocations, 10), "the queue here did not start"
        assert other.stdin
        other.stdin.write("go\n")
        other.stdin.flush()
        for thread in threads:
            thread.join(60)
        assert other.wait(60) == 0, (tmp_path / "stderr").read_text()[-3000:]
    finally:
        other.kill()

    theirs = statuses(engine, elsewhere)["ee"]
    assert theirs.status == "returned-ack"
    assert "slot_stuck" not in (theirs.history[-1].detail or {}), theirs.history[-1].detail
    calls = sorted(sim.invocations(), key=lambda c: c["received_at"])
    assert len(calls) == 15
    for earlier, later in zip(calls, calls[1:]):
        assert later["received_at"] >= earlier["responded_at"], "two calls to ee overlapped"
    assert calls[-1]["payload"]["identifier"] != str(theirs.identifier), (
        "the other process's send waited until this process's whole queue was done")


HOLD_AND_HANG = """
import time
from tasks.provider_limits import provider_slot
with provider_slot("ee", 60):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_holder_that_died_is_taken_for_gone_and_its_lease_released(configure, engine, sim, caplog):
    configure(ENABLED_CBCS="ee")
    ensure_limits(["ee"])
    holder = subprocess.Popen([sys.executable, "-c", HOLD_AND_HANG], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout and holder.stdout.readline().strip() == "held"
        record = eventually(lambda: _holder_record(str(holder.pid)), 10)
        assert record, "the holder wrote no holder record"
    finally:
        holder.kill()  # SIGKILL: no release, no more renewals
        holder.wait(10)
    lease_id = record["lease_id"]

    _, _, event_id = make_alert(engine)
    begun = time.monotonic()
    dispatch.send_once(engine, get_proxy(get_settings()), event_id, "ee", headline="h", enabled=["ee"],
                              provider_slot=lambda: provider_slot("ee", 4))
    took = time.monotonic() - begun
    assert 4 <= took < 8, took
    note = statuses(engine, event_id)["ee"].history[-1].detail["slot_stuck"]
    assert ("cbc-ee still taken after 4 s with no sign of life from its holder "
            f"(last holder record: lease {lease_id}") in note
    assert any(r.levelname == "ERROR" and "cbc-ee still taken" in r.getMessage() for r in caplog.records)
    # Freed by releasing the dead holder's lease, so its expiry cannot later free a live holder's slot.
    assert eventually(lambda: _active_slots("ee") == 0, 10)
    with get_client(sync_client=True) as client, pytest.raises(httpx.HTTPStatusError) as gone:
        client.renew_concurrency_lease(uuid.UUID(lease_id), lease_duration=60)
    assert gone.value.response.status_code == 410
    _, _, second = make_alert(engine)
    dispatch.send_once(engine, get_proxy(get_settings()), second, "ee", headline="h", enabled=["ee"],
                              provider_slot=lambda: provider_slot("ee", 4))
    assert "slot_stuck" not in (statuses(engine, second)["ee"].history[-1].detail or {})


def _holder_record(pid: str) -> dict | None:
    with get_client(sync_client=True) as client:
        variable = client.read_variable_by_name(holder_record_name("ee"))
    value = variable.value if variable else None
    return value if isinstance(value, dict) and str(value.get("holder", "")).endswith(f":{pid}") else None


def _active_slots(provider: str) -> int:
    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(limit_name(provider)).active_slots


def test_a_holder_stuck_in_its_call_past_the_bound_does_not_keep_the_network_from_the_next_send(configure, engine):
    """A send holding the slot far longer than any live call can (its body blocked, say) stops
    looking alive once it has held it for the bound: the send queued behind it in this process goes
    ahead without the slot within about two bounds, saying why, instead of waiting for it."""
    configure(ENABLED_CBCS="ee")
    ensure_limits(["ee"])
    entered, let_go = threading.Event(), threading.Event()

    def stuck() -> None:
        with provider_slot("ee", 2) as note:
            assert note is None
            entered.set()
            let_go.wait(30)

    holder = in_thread(stuck)
    assert entered.wait(10)
    begun = time.monotonic()
    try:
        with provider_slot("ee", 2) as note:
            waited = time.monotonic() - begun
    finally:
        let_go.set()
        holder.join(30)
    assert note is not None and "sent without the slot" in note, note
    assert waited < 8, waited
    assert eventually(lambda: _active_slots("ee") == 0, 15)

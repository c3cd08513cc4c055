"""The cbc-<provider> slot against a real Prefect server: mutual exclusion, in the domain and in
the task; and a leaked slot never keeps an alert from a network."""

from __future__ import annotations

import threading
import time

import pytest
from prefect.client.orchestration import get_client

from broadcasts import dispatch
from broadcasts.cbc_proxy import get_proxy
from broadcasts.models import utcnow
from broadcasts.settings import get_settings
from tasks.provider_limits import SLOT_STUCK_EVENT, ensure_limits, limit_name, provider_slot
from tests.factories import make_alert
from tests.flows.helpers import in_thread, prefect_events, run_event, statuses

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
            dispatch.send_to_provider(engine, proxy, event_id, "ee", headline="h", enabled=["ee"],
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
    slot_wait = 2 * (0.5 + 0.5) + 10
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
    assert "cbc-three still taken after 12 s" in stuck and "sent without the slot" in stuck
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

"""The cbc-<provider> slot against a real Prefect server: mutual exclusion, and a taken slot is a
retryable `ProviderBusy`, never a hang."""

from __future__ import annotations

import threading

import pytest
from prefect.client.orchestration import get_client

from broadcasts import dispatch
from broadcasts.cbc_proxy import get_proxy
from broadcasts.errors import ProviderBusy
from broadcasts.settings import get_settings
from tasks.provider_limits import LEASE_SECONDS, ensure_limits, limit_name, provider_slot
from tests.factories import make_alert
from tests.flows.helpers import in_thread

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


def test_a_slot_held_elsewhere_is_a_retryable_provider_busy_after_the_timeout(configure):
    configure(ENABLED_CBCS="three")
    ensure_limits(["three"])
    with get_client(sync_client=True) as client:
        held = client.increment_concurrency_slots_with_lease(
            names=[limit_name("three")], slots=1, mode="concurrency", lease_duration=LEASE_SECONDS
        ).json()["lease_id"]
        try:
            with pytest.raises(ProviderBusy, match="three"), provider_slot("three", 1):
                pass
        finally:
            client.release_concurrency_slots_with_lease(held)
    with provider_slot("three", 5):  # free again
        pass

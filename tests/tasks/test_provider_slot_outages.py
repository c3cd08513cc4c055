"""The cbc-<provider> slot when the Prefect API is unreachable, hangs or answers nonsense: a send
waits out a short outage and takes the slot; a longer one it outlasts by going ahead without the
slot at about the wait's bound, never minutes later, and never with an error of its own. The
slot's client talks to the real test Prefect server through a door (tests/tasks/prefect_door.py)
that can refuse connections, hang, or answer with an HTML page."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator

import pytest
from prefect.client.orchestration import get_client
from prefect.events.worker import EventsWorker
from prefect.settings import PREFECT_API_URL, temporary_settings

from broadcasts import dispatch
from broadcasts.cbc_proxy import get_proxy
from broadcasts.settings import get_settings
from tasks.provider_limits import ensure_limits, limit_name, provider_slot, slot_wait_seconds
from tasks.slot_api import CALL_TIMEOUT_SECONDS
from tests.factories import make_alert
from tests.flows.helpers import in_thread, statuses
from tests.support.polling import eventually
from tests.tasks.prefect_door import PrefectDoor

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture
def door(prefect_server: str) -> Iterator[PrefectDoor]:
    door = PrefectDoor(prefect_server)
    yield door
    door.set("forward")
    slot_given_back()
    EventsWorker.drain_all(timeout=10)  # the pages sent through the door, before it shuts for good
    door.close()


@pytest.fixture
def short_wait(configure) -> float:  # type: ignore[no-untyped-def]
    """Small proxy timeouts, so the slot's bound is 4 routes × (0.5 + 0.5) + 10 = 14 s."""
    configure(ENABLED_CBCS="ee", CBC_PROXY_CONNECT_TIMEOUT="0.5", CBC_PROXY_READ_TIMEOUT="0.5")
    ensure_limits(["ee"])
    return slot_wait_seconds(get_settings())


def send_through(door: PrefectDoor, engine, wait: float, limit: float):  # type: ignore[no-untyped-def]
    """Sends a new alert to ee with the slot's client behind `door`: ((the event id, the result
    or the error raised), seconds taken). Fails if the send has not finished within `limit` s."""
    _, _, event_id = make_alert(engine)
    outcome: list[object] = []

    def send() -> None:
        try:
            outcome.append(dispatch.send_once(
                engine, get_proxy(get_settings()), event_id, "ee", headline="h", enabled=["ee"],
                provider_slot=lambda: provider_slot("ee", wait)))
        except BaseException as error:  # reported by the caller, not lost in the thread
            outcome.append(error)

    begun = time.monotonic()
    with temporary_settings(updates={PREFECT_API_URL: door.api}):
        thread = in_thread(send)
    thread.join(limit)
    took = time.monotonic() - begun
    assert not thread.is_alive(), f"the send was still waiting after {took:.0f} s (limit {limit:.0f} s)"
    return (event_id, outcome[0]), took


def slot_given_back() -> None:
    """Waits for the last send's release (in the background) to reach the server, so cutting the
    door off does not strand its lease."""
    def free() -> bool:
        with get_client(sync_client=True) as client:
            return client.read_global_concurrency_limit_by_name(limit_name("ee")).active_slots == 0

    assert eventually(free, 10), "the slot was not given back"


def acknowledged_with_note(engine, sent: tuple[uuid.UUID, object]) -> str | None:  # type: ignore[no-untyped-def]
    """The `slot_stuck` note of an acknowledged send's last history row (None: it held the slot)."""
    event_id, result = sent
    assert isinstance(result, dispatch.SendResult), f"the send did not succeed: {result!r}"
    assert result.status == "returned-ack" and result.sent_now
    return (statuses(engine, event_id)["ee"].history[-1].detail or {}).get("slot_stuck")


@pytest.mark.parametrize("outage", [1.0, 6.0], ids=["1s", "shorter-than-the-wait"])
def test_a_send_waits_out_a_prefect_outage_shorter_than_the_wait_and_takes_the_slot(
        door, short_wait, engine, sim, outage):
    assert acknowledged_with_note(engine, send_through(door, engine, short_wait, 30)[0]) is None  # connected once
    slot_given_back()
    door.set("refuse")
    in_thread(lambda: (time.sleep(outage), door.set("forward")))
    sent, took = send_through(door, engine, short_wait, outage + 10)

    assert acknowledged_with_note(engine, sent) is None, "the send went without the slot"
    assert outage <= took < outage + 3, f"took {took:.1f} s for a {outage:g} s outage"


@pytest.mark.parametrize("fault", ["refuse", "hang", "html"],
                         ids=["refusing-connections", "never-answering", "answering-html"])
def test_a_send_goes_ahead_without_the_slot_at_the_bound_when_prefect_stays_unreachable(
        door, short_wait, engine, sim, caplog, fault):
    assert acknowledged_with_note(engine, send_through(door, engine, short_wait, 30)[0]) is None  # connected once
    slot_given_back()
    door.set(fault)
    bound = short_wait + 2 * CALL_TIMEOUT_SECONDS + 2  # the last calls may each take their timeout
    with caplog.at_level(logging.WARNING):
        sent, took = send_through(door, engine, short_wait, bound + 20)
    note = acknowledged_with_note(engine, sent)

    assert took < bound, f"the send waited {took:.1f} s; the slot's bound is {short_wait:g} s"
    assert took >= short_wait - 1
    assert note and f"cbc-ee not taken: the Prefect API did not answer for {short_wait:g} s" in note, note
    assert "sent without the slot" in note
    assert any(r.levelname == "ERROR" and "cbc-ee not taken" in r.getMessage() for r in caplog.records)
    # Still unreachable: the next send does not wait the whole bound again.
    sent, took = send_through(door, engine, short_wait, bound + 20)
    assert acknowledged_with_note(engine, sent) and took < CALL_TIMEOUT_SECONDS * 2 + 2, took
    # Back: the next send takes the slot again.
    door.set("forward")
    sent, took = send_through(door, engine, short_wait, 30)
    assert acknowledged_with_note(engine, sent) is None and took < 5

"""The per-attempt rules of docs/behaviour.md §4, one test per outcome, over rows built in memory and an
explicit `now`."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from broadcasts.errors import (
    BroadcastCancelled,
    EarlierEventFailed,
    EarlierEventPending,
    EarlierEventRefused,
    EventExpired,
    InvalidBroadcast,
    MessageStubbed,
    NotSendable,
    RetryableError,
    SendRefused,
    ServiceNotLive,
)
from broadcasts.guards import (
    ensure_earlier_events_acknowledged,
    ensure_not_cancelled,
    ensure_not_expired,
    ensure_service_may_broadcast,
    ensure_valid_broadcast,
    is_acknowledged,
)
from broadcasts.models import (
    BroadcastEvent,
    BroadcastMessage,
    BroadcastProviderMessage,
    Service,
)

NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
TRIANGLE = [[51.5, -0.1], [51.6, -0.1], [51.6, 0.0]]


def make_event(
    message_type: str = "alert",
    *,
    body: str | None = "Flood warning. Move to higher ground.",
    polygons: list | None = None,
    finishes_at: datetime | None = NOW + timedelta(hours=3),
    sent_at: datetime = NOW - timedelta(minutes=1),
    active: bool = True,
    restricted: bool = False,
    stubbed: bool = False,
) -> BroadcastEvent:
    service = Service(id=uuid.uuid4(), name="Environment Agency", active=active, restricted=restricted)
    message = BroadcastMessage(
        id=uuid.uuid4(), service_id=service.id, service=service, content=body or "",
        areas={"names": [], "simple_polygons": [TRIANGLE]}, status="broadcasting", stubbed=stubbed,
    )
    return BroadcastEvent(
        id=uuid.uuid4(),
        service_id=service.id,
        service=service,
        broadcast_message_id=message.id,
        broadcast_message=message,
        message_type=message_type,
        sent_at=sent_at,
        transmitted_content=None if body is None else {"body": body},
        transmitted_areas={"names": [], "simple_polygons": [TRIANGLE] if polygons is None else polygons},
        transmitted_finishes_at=finishes_at,
    )


def provider_message(status: str, event: BroadcastEvent | None = None) -> BroadcastProviderMessage:
    return BroadcastProviderMessage(
        id=uuid.uuid4(), broadcast_event_id=event.id if event else None, provider="ee", status=status
    )


# --- rule 1: stubbed, inactive, restricted --------------------------------------------------


def test_a_stubbed_message_is_refused_naming_the_event():
    event = make_event(stubbed=True)
    with pytest.raises(MessageStubbed, match=f"event {event.id} belongs to a stubbed") as raised:
        ensure_service_may_broadcast(event)
    assert isinstance(raised.value, SendRefused)


def test_an_inactive_service_is_refused_naming_the_service():
    event = make_event(active=False)
    with pytest.raises(ServiceNotLive, match=f"service {event.service.id} is inactive"):
        ensure_service_may_broadcast(event)


def test_a_restricted_trial_service_is_refused():
    event = make_event(restricted=True)
    with pytest.raises(ServiceNotLive, match="restricted"):
        ensure_service_may_broadcast(event)


def test_a_stubbed_message_of_an_inactive_service_is_reported_as_stubbed():
    with pytest.raises(MessageStubbed):
        ensure_service_may_broadcast(make_event(stubbed=True, active=False))


def test_a_live_service_with_an_unstubbed_message_may_broadcast():
    assert ensure_service_may_broadcast(make_event()) is None


# --- rule 2: valid content and areas --------------------------------------------------------


@pytest.mark.parametrize("message_type", ["alert", "update"])
def test_a_valid_alert_or_update_passes(message_type):
    assert ensure_valid_broadcast(make_event(message_type), NOW) is None


@pytest.mark.parametrize("message_type", ["alert", "update"])
def test_too_long_content_is_an_invalid_broadcast_listing_the_length(message_type):
    event = make_event(message_type, body="a" * 1396)
    with pytest.raises(InvalidBroadcast) as raised:
        ensure_valid_broadcast(event, NOW)
    assert len(raised.value.problems) == 1
    assert "1396 GSM-7" in raised.value.problems[0]
    assert str(event.id) in str(raised.value)
    assert isinstance(raised.value, NotSendable)


@pytest.mark.parametrize("body", [None, "", "   "], ids=["no-content", "empty", "blank"])
def test_missing_or_empty_content_is_an_invalid_broadcast(body):
    with pytest.raises(InvalidBroadcast) as raised:
        ensure_valid_broadcast(make_event("alert", body=body), NOW)
    assert raised.value.problems == ["content is empty"]


@pytest.mark.parametrize("message_type", ["alert", "update"])
def test_an_event_without_a_polygon_is_an_invalid_broadcast(message_type):
    with pytest.raises(InvalidBroadcast) as raised:
        ensure_valid_broadcast(make_event(message_type, polygons=[]), NOW)
    assert raised.value.problems == ["areas have no polygon"]


def test_an_out_of_range_point_is_an_invalid_broadcast_naming_the_coordinate():
    with pytest.raises(InvalidBroadcast, match="latitude 90.5"):
        ensure_valid_broadcast(make_event(polygons=[[[90.5, 0.0], [1.0, 1.0], [2.0, 2.0]]]), NOW)


@pytest.mark.parametrize("message_type", ["alert", "update", "cancel"])
def test_an_event_without_its_own_finish_time_uses_its_messages(message_type):
    event = make_event(message_type, finishes_at=None)
    event.broadcast_message.finishes_at = NOW + timedelta(hours=1)
    assert ensure_valid_broadcast(event, NOW) is None
    assert event.finishes_at == NOW + timedelta(hours=1)
    with pytest.raises(EventExpired):
        ensure_not_expired(event, NOW + timedelta(hours=2), attempted=False)


@pytest.mark.parametrize("message_type", ["alert", "update", "cancel"])
def test_an_event_with_no_finish_time_at_all_is_an_invalid_broadcast(message_type):
    with pytest.raises(InvalidBroadcast) as raised:
        ensure_valid_broadcast(make_event(message_type, finishes_at=None), NOW)
    assert len(raised.value.problems) == 1
    assert "no finish time" in raised.value.problems[0]


@pytest.mark.parametrize("message_type", ["alert", "update", "cancel"])
def test_an_event_finishing_further_away_than_retries_cover_is_an_invalid_broadcast(message_type):
    assert ensure_valid_broadcast(make_event(message_type, finishes_at=NOW + timedelta(days=7)), NOW) is None
    with pytest.raises(InvalidBroadcast, match="more than 7 days away"):
        ensure_valid_broadcast(make_event(message_type, finishes_at=NOW + timedelta(days=7, seconds=1)), NOW)


def test_content_that_is_not_an_object_is_an_invalid_broadcast_not_a_crash():
    event = make_event()
    event.transmitted_content = "Flood warning"  # type: ignore[assignment]
    with pytest.raises(InvalidBroadcast, match="transmitted_content is str, not an object"):
        ensure_valid_broadcast(event, NOW)


def test_every_problem_is_listed_at_once():
    with pytest.raises(InvalidBroadcast) as raised:
        ensure_valid_broadcast(make_event(body="", polygons=[], finishes_at=None), NOW)
    problems = raised.value.problems
    assert len(problems) == 3
    assert problems[:2] == ["content is empty", "areas have no polygon"]
    assert "no finish time" in problems[2]


def test_a_cancel_skips_content_and_area_checks():
    assert ensure_valid_broadcast(make_event("cancel", body=None, polygons=[]), NOW) is None


# --- rule 3: acknowledged -------------------------------------------------------------------


def test_a_returned_ack_message_is_acknowledged():
    assert is_acknowledged(provider_message("returned-ack"))


@pytest.mark.parametrize("status", ["sending", "returned-error", "technical-failure"])
def test_a_message_in_any_other_status_is_not_acknowledged(status):
    assert not is_acknowledged(provider_message(status))


def test_no_provider_message_is_not_acknowledged():
    assert not is_acknowledged(None)


# --- rule 4: expiry -------------------------------------------------------------------------


def test_an_event_that_finished_one_second_before_now_has_expired():
    event = make_event(finishes_at=NOW - timedelta(seconds=1))
    with pytest.raises(EventExpired) as raised:
        ensure_not_expired(event, NOW, attempted=False)
    assert raised.value.reason == "expired"
    assert f"event {event.id} expired (finishes_at" in str(raised.value)
    assert "while retrying" not in str(raised.value)
    assert isinstance(raised.value, NotSendable)


def test_an_event_that_finishes_exactly_now_has_not_expired():
    assert ensure_not_expired(make_event(finishes_at=NOW), NOW, attempted=False) is None


def test_an_event_that_finishes_after_now_has_not_expired():
    assert ensure_not_expired(make_event(finishes_at=NOW + timedelta(seconds=1)), NOW, attempted=True) is None


def test_expiry_is_compared_in_absolute_time_not_by_wall_clock_digits():
    plus_two = timezone(timedelta(hours=2))  # 13:00+02:00 is 11:00 UTC: before NOW
    with pytest.raises(EventExpired):
        ensure_not_expired(make_event(finishes_at=datetime(2026, 11, 27, 13, 0, tzinfo=plus_two)), NOW, attempted=False)


def test_an_event_that_expires_after_an_attempt_expired_while_retrying():
    event = make_event(finishes_at=NOW - timedelta(seconds=1))
    with pytest.raises(EventExpired) as raised:
        ensure_not_expired(event, NOW, attempted=True)
    assert raised.value.reason == "expired while retrying"
    assert "expired while retrying" in str(raised.value)


def test_an_event_that_expires_before_any_attempt_is_plainly_expired():
    event = make_event(finishes_at=NOW - timedelta(seconds=1))
    with pytest.raises(EventExpired) as raised:
        ensure_not_expired(event, NOW, attempted=False)
    assert raised.value.reason == "expired"


# --- rule 5: earlier events acknowledged ----------------------------------------------------


def broadcast(count: int) -> list[BroadcastEvent]:
    """`count` events of one broadcast message, oldest first, one minute apart."""
    first = make_event("alert", sent_at=NOW - timedelta(minutes=count))
    events = [first]
    for n in range(1, count):
        events.append(
            BroadcastEvent(
                id=uuid.uuid4(), service_id=first.service_id, service=first.service,
                broadcast_message_id=first.broadcast_message_id,
                broadcast_message=first.broadcast_message, message_type="update",
                sent_at=first.sent_at + timedelta(minutes=n),
                transmitted_content={"body": f"Update {n}"},
                transmitted_areas=first.transmitted_areas,
                transmitted_finishes_at=first.transmitted_finishes_at,
            )
        )
    return events


def test_the_first_event_of_a_broadcast_has_nothing_to_wait_for():
    (event,) = broadcast(1)
    assert ensure_earlier_events_acknowledged(event, "ee", []) is None


def test_an_event_whose_earlier_events_are_all_acknowledged_may_be_sent():
    first, second, third = broadcast(3)
    earlier = [(first, provider_message("returned-ack", first)), (second, provider_message("returned-ack", second))]
    assert ensure_earlier_events_acknowledged(third, "vodafone", earlier) is None


def test_an_earlier_technical_failure_blocks_naming_the_event_and_the_replay_command():
    first, second = broadcast(2)
    with pytest.raises(EarlierEventFailed) as raised:
        ensure_earlier_events_acknowledged(second, "o2", [(first, provider_message("technical-failure", first))])
    message = str(raised.value)
    assert raised.value.earlier_event_id == first.id
    assert f"earlier event {first.id} ended technical-failure" in message
    assert f"broadcasts replay {first.id} o2" in message
    assert f"broadcasts replay {second.id} o2" in message
    assert f"event {second.id} is blocked for o2" in message
    assert isinstance(raised.value, NotSendable)


@pytest.mark.parametrize(
    "status, shown",
    [(None, "not yet sent"), ("sending", "sending"), ("returned-error", "returned-error")],
    ids=["no-provider-message", "sending", "returned-error"],
)
def test_an_earlier_event_still_in_progress_makes_the_send_wait_naming_that_event(status, shown):
    first, second = broadcast(2)
    message = None if status is None else provider_message(status, first)
    with pytest.raises(EarlierEventPending) as raised:
        ensure_earlier_events_acknowledged(second, "three", [(first, message)])
    assert raised.value.earlier_event_id == first.id
    assert raised.value.reason == f"waiting for event {first.id} (alert, not yet acknowledged by three)"
    assert str(raised.value) == f"event {second.id} is {raised.value.reason}; it is {shown}"
    assert isinstance(raised.value, RetryableError)


def test_the_send_waits_for_the_oldest_unacknowledged_event():
    first, second, third = broadcast(3)
    earlier = [(first, provider_message("sending", first)), (second, None)]
    with pytest.raises(EarlierEventPending) as raised:
        ensure_earlier_events_acknowledged(third, "ee", earlier)
    assert raised.value.earlier_event_id == first.id


def test_a_pending_event_after_an_acknowledged_one_still_makes_the_send_wait():
    first, second, third = broadcast(3)
    earlier = [(first, provider_message("returned-ack", first)), (second, provider_message("returned-error", second))]
    with pytest.raises(EarlierEventPending) as raised:
        ensure_earlier_events_acknowledged(third, "ee", earlier)
    assert raised.value.earlier_event_id == second.id


def test_the_advice_for_a_block_behind_an_expired_event_is_not_to_replay_it():
    first, second = broadcast(2)
    first.transmitted_finishes_at = NOW - timedelta(seconds=1)
    with pytest.raises(EarlierEventFailed) as raised:
        ensure_earlier_events_acknowledged(second, "o2", [(first, provider_message("technical-failure", first))], NOW)
    message = str(raised.value)
    assert "has expired, so replaying it cannot succeed" in message
    assert "broadcasts replay" not in message


def test_a_failed_earlier_event_wins_over_an_older_pending_one():
    first, second, third = broadcast(3)
    earlier = [(first, provider_message("sending", first)), (second, provider_message("technical-failure", second))]
    with pytest.raises(EarlierEventFailed) as raised:
        ensure_earlier_events_acknowledged(third, "ee", earlier)
    assert raised.value.earlier_event_id == second.id


# --- lifecycle: nothing but a cancel after a cancel -----------------------------------------


def test_an_update_written_after_a_cancel_of_its_broadcast_is_refused():
    alert, cancel, update = broadcast(3)
    cancel.message_type = "cancel"
    with pytest.raises(BroadcastCancelled, match=f"after cancel {cancel.id}") as raised:
        ensure_not_cancelled(update, [alert, cancel])
    assert isinstance(raised.value, SendRefused)


def test_a_cancel_is_always_sendable_and_an_update_before_the_cancel_is_not_refused():
    alert, update, cancel = broadcast(3)
    cancel.message_type = "cancel"
    assert ensure_not_cancelled(update, [alert]) is None
    second_cancel = make_event("cancel", sent_at=cancel.sent_at + timedelta(minutes=1))
    assert ensure_not_cancelled(second_cancel, [alert, update, cancel]) is None


# --- rule 5: one order, even within one second ----------------------------------------------


def written_in_one_second(*message_types: str) -> list[BroadcastEvent]:
    """Events of one broadcast with the same `sent_at`, written (created) in the order given."""
    events = broadcast(len(message_types))
    for n, (event, message_type) in enumerate(zip(events, message_types)):
        event.message_type, event.sent_at = message_type, NOW
        event.created_at = NOW + timedelta(milliseconds=n)
    return events


def test_of_two_events_with_the_same_sent_at_the_one_written_later_waits_for_the_other():
    first, second = written_in_one_second("alert", "update")
    with pytest.raises(EarlierEventPending) as raised:
        ensure_earlier_events_acknowledged(second, "ee", [(first, provider_message("sending", first))])
    assert raised.value.earlier_event_id == first.id
    assert ensure_earlier_events_acknowledged(first, "ee", [(second, provider_message("sending", second))]) is None


def test_an_update_written_after_a_cancel_in_the_same_second_is_refused():
    alert, cancel, update = written_in_one_second("alert", "cancel", "update")
    with pytest.raises(BroadcastCancelled):
        ensure_not_cancelled(update, [alert, cancel])


# --- rule 5: a failed or refused earlier event never makes a send wait ----------------------


REFUSAL = "event X: service S is restricted (trial mode); nothing is sent"


def test_an_update_behind_a_refused_event_is_blocked_naming_the_refusal_and_the_replay_commands():
    alert, refused_update, update = broadcast(3)
    earlier = [(alert, provider_message("returned-ack", alert)), (refused_update, None)]
    with pytest.raises(EarlierEventRefused) as raised:
        ensure_earlier_events_acknowledged(update, "ee", earlier, NOW, {refused_update.id: REFUSAL})
    message = str(raised.value)
    assert isinstance(raised.value, EarlierEventFailed) and raised.value.earlier_event_id == refused_update.id
    assert f"earlier event {refused_update.id} was refused ({REFUSAL})" in message
    assert f"broadcasts replay {refused_update.id} ee" in message and f"broadcasts replay {update.id} ee" in message


@pytest.mark.parametrize("earlier_state", ["technical-failure", "refused"])
def test_a_cancel_is_not_held_by_an_earlier_event_that_failed_or_was_refused(earlier_state):
    alert, update, cancel = broadcast(3)
    cancel.message_type = "cancel"
    message = provider_message("technical-failure", update) if earlier_state == "technical-failure" else None
    earlier = [(alert, provider_message("returned-ack", alert)), (update, message)]
    assert ensure_earlier_events_acknowledged(cancel, "ee", earlier, NOW, {update.id: REFUSAL}) is None


@pytest.mark.parametrize("status", [None, "sending", "returned-error"], ids=["not-yet-sent", "sending", "returned-error"])
def test_a_cancel_still_waits_for_an_earlier_event_in_progress(status):
    alert, update, cancel = broadcast(3)
    cancel.message_type = "cancel"
    earlier = [(alert, provider_message("technical-failure", alert)),
               (update, None if status is None else provider_message(status, update))]
    with pytest.raises(EarlierEventPending) as raised:
        ensure_earlier_events_acknowledged(cancel, "ee", earlier, NOW, {alert.id: REFUSAL})
    assert raised.value.earlier_event_id == update.id


def test_a_cancel_does_not_wait_for_an_earlier_event_it_superseded():
    alert, update, cancel = broadcast(3)
    cancel.message_type = "cancel"
    earlier = [(alert, provider_message("superseded", alert)), (update, provider_message("superseded", update))]
    assert ensure_earlier_events_acknowledged(cancel, "ee", earlier, NOW) is None


def test_a_refusal_no_longer_counts_once_a_replay_gave_the_event_a_provider_message():
    alert, update = broadcast(2)
    with pytest.raises(EarlierEventPending):
        ensure_earlier_events_acknowledged(update, "ee", [(alert, provider_message("sending", alert))], NOW,
                                           {alert.id: REFUSAL})

"""The provider-send task's retry policy: the production schedule, and what is retried; and never a
cached result."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest
from prefect import flow

from broadcasts import dispatch
from broadcasts.errors import AllRoutesFailed, DatabaseUnavailable, EarlierEventPending, EventExpired, SendInProgress
from broadcasts.models import utcnow
from broadcasts.retry import MAX_RETRIES, RETRY_DELAYS, SPARE_RETRIES, planned_retries
from tasks.retry_clock import MAX_LEAD_FRACTION, MAX_LEAD_SECONDS
from tasks.send_to_provider import planned_for, send_to_provider, should_retry
from tests.factories import make_alert
from tests.flows.helpers import calls_for


def failed_with(error: Exception) -> SimpleNamespace:
    return SimpleNamespace(data=error)  # the engine hands the condition Failed(data=exception)


def test_the_task_uses_the_production_schedule_and_enough_retries():
    assert send_to_provider.retry_delay_seconds == [1, 2, 4, 8, 16, 32, 64, 128, 240] == RETRY_DELAYS
    assert send_to_provider.retries == MAX_RETRIES + SPARE_RETRIES
    assert send_to_provider.retry_jitter_factor is None


def test_each_run_plans_retries_from_its_events_time_left_and_cuts_the_last_wait():
    in_ten_minutes = utcnow() + timedelta(minutes=10)
    planned = planned_for(in_ten_minutes, 1)
    assert planned.retries == planned_retries(600) == 9 + 1 + SPARE_RETRIES  # "Retry 3/13", not 3/2532
    delays = planned.retry_delay_seconds
    assert list(delays) == RETRY_DELAYS  # what the server is told
    for n, plan in enumerate([1, 2, 4, 8, 16, 32, 64, 128, 240]):
        # Woken a little early so the call comes on plan (tasks/retry_clock.py), never later than planned.
        assert plan - min(MAX_LEAD_SECONDS, MAX_LEAD_FRACTION * plan) - 0.001 <= delays[n] <= plan
    soon = planned_for(utcnow() + timedelta(seconds=10), 1).retry_delay_seconds
    assert 10 <= soon[5] <= 10.5  # 32 s would pass the finish time: cut to land just after it
    scaled = planned_for(utcnow() + timedelta(seconds=10), 0.01).retry_delay_seconds[5]
    assert 0.32 * (1 - MAX_LEAD_FRACTION) - 0.001 <= scaled <= 0.32
    # Each plan is the run's own: the task itself keeps the production schedule.
    assert (send_to_provider.retries, send_to_provider.retry_delay_seconds) == (MAX_RETRIES + SPARE_RETRIES,
                                                                              RETRY_DELAYS)
    assert type(send_to_provider.retry_delay_seconds) is list


@pytest.mark.parametrize(
    "error",
    [AllRoutesFailed([]), EarlierEventPending("e", "ee", "earlier", "alert", "sending"), SendInProgress("e", "ee"),
     DatabaseUnavailable("x")],
    ids=["all-routes-failed", "earlier-event-pending", "send-in-progress", "database-unavailable"],
)
def test_retryable_failures_are_retried_while_the_event_has_not_expired(error):
    error.expires_at = utcnow() + timedelta(minutes=5)
    assert should_retry(None, None, failed_with(error)) is True
    error.expires_at = utcnow() - timedelta(seconds=1)
    assert should_retry(None, None, failed_with(error)) is False


@pytest.mark.parametrize("error", [EventExpired("e", utcnow(), False), ValueError("a bug"), TypeError("a bug")])
def test_anything_else_is_not_retried(error):
    assert should_retry(None, None, failed_with(error)) is False


@flow(name="send-twice", persist_result=True)  # results persisted: what a cache would serve
def _send_twice(event_id: str) -> list[dispatch.SendResult]:
    return [send_to_provider(event_id, "ee"), send_to_provider(event_id, "ee")]


def test_a_send_is_never_served_from_prefect_s_cache(engine, sim, prefect_server):
    """Same inputs in the same run: Prefect's default cache policy would hand the second call the
    first one's result ("sent now"); the task runs again and finds the message acknowledged."""
    _, _, event_id = make_alert(engine)
    first, second = _send_twice(str(event_id))
    assert (first.sent_now, second.sent_now) == (True, False)
    assert first.provider_message_id == second.provider_message_id
    assert len(calls_for(sim, first.provider_message_id)) == 1

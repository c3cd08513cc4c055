"""The provider-send task's retry policy: the production schedule, and what is retried."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest

from broadcasts.errors import AllRoutesFailed, EarlierEventPending, EventExpired, ProviderBusy, SendInProgress
from broadcasts.models import utcnow
from broadcasts.retry import MAX_RETRIES, RETRY_DELAYS
from tasks.send_provider_message import send_to_provider, should_retry, with_schedule


def failed_with(error: Exception) -> SimpleNamespace:
    return SimpleNamespace(data=error)  # the engine hands the condition Failed(data=exception)


def test_the_task_uses_the_production_schedule_and_enough_retries():
    assert send_to_provider.retry_delay_seconds == [1, 2, 4, 8, 16, 32, 64, 128, 240] == RETRY_DELAYS
    assert send_to_provider.retries == MAX_RETRIES
    assert send_to_provider.retry_jitter_factor is None
    assert with_schedule(1) is send_to_provider
    assert with_schedule(0.5).retry_delay_seconds == [0.5, 1, 2, 4, 8, 16, 32, 64, 120]


@pytest.mark.parametrize(
    "error",
    [AllRoutesFailed([]), EarlierEventPending("e", "ee", "earlier", "sending"), SendInProgress("e", "ee"), ProviderBusy("ee", "x")],
    ids=["all-routes-failed", "earlier-event-pending", "send-in-progress", "provider-busy"],
)
def test_retryable_failures_are_retried_while_the_event_has_not_expired(error):
    error.expires_at = utcnow() + timedelta(minutes=5)
    assert should_retry(None, None, failed_with(error)) is True
    error.expires_at = utcnow() - timedelta(seconds=1)
    assert should_retry(None, None, failed_with(error)) is False


@pytest.mark.parametrize("error", [EventExpired("e", utcnow(), False), ValueError("a bug"), TypeError("a bug")])
def test_anything_else_is_not_retried(error):
    assert should_retry(None, None, failed_with(error)) is False

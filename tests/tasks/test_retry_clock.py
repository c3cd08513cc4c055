"""The retry clock (tasks/retry_clock.py): the wait handed to Prefect and the call's instant,
with real time."""

from __future__ import annotations

import time

import pytest

from tasks.retry_clock import FIRST_LEAD_SECONDS, MARGIN_SECONDS, MAX_LEAD_FRACTION, MAX_LEAD_SECONDS, SAMPLES, RetryClock


def retry(clock: RetryClock, planned: float, start_up: float) -> float:
    """One failed attempt, its wait and a retry whose start-up takes `start_up` s; returns the
    seconds from the failure to the call."""
    clock.failed("run")
    failed = time.monotonic()
    time.sleep(clock.wait("run", planned))
    time.sleep(start_up)
    clock.calling("run")
    return time.monotonic() - failed


def test_the_wait_is_the_plan_counted_from_the_failure_less_the_lead():
    clock = RetryClock()
    clock.failed("run")
    time.sleep(0.2)
    assert clock.wait("run", 1.0) == pytest.approx(0.8 - FIRST_LEAD_SECONDS, abs=0.05)


def test_the_wait_counts_from_the_attempts_last_answer_when_it_is_known():
    clock = RetryClock()
    clock.failed("run", at=time.monotonic() - 0.3)  # recording the failure took 0.3 s
    assert clock.wait("run", 1.0) == pytest.approx(0.7 - FIRST_LEAD_SECONDS, abs=0.05)


def test_a_retry_asked_for_without_a_failure_recorded_counts_from_now():
    assert RetryClock().wait("run", 2.0) == pytest.approx(2.0 - FIRST_LEAD_SECONDS, abs=0.01)


def test_the_call_comes_on_plan_and_never_before_from_the_first_retry_on():
    clock = RetryClock()
    assert 1.0 <= retry(clock, 1.0, start_up=0.08) < 1.03  # nothing measured yet: the first lead covers it
    assert clock.lead() == pytest.approx(2 * 0.08 + MARGIN_SECONDS, abs=0.05)
    for _ in range(3):
        assert 1.0 <= retry(clock, 1.0, start_up=0.08) < 1.03


def test_a_first_retry_slower_than_the_first_lead_is_late_by_the_difference_only():
    clock = RetryClock()
    late = retry(clock, 1.0, start_up=FIRST_LEAD_SECONDS + 0.1) - 1.0
    assert late == pytest.approx(0.1, abs=0.04)


def test_a_start_up_faster_than_usual_waits_for_the_planned_instant():
    clock = RetryClock()
    retry(clock, 0.0, start_up=0.1)
    assert 1.0 <= retry(clock, 1.0, start_up=0.0) < 1.03


def test_the_lead_is_bounded_by_the_wait_and_by_an_absolute_cap():
    clock = RetryClock()
    retry(clock, 0.0, start_up=0.4)
    clock.failed("run")
    assert clock.wait("run", 1.0) == pytest.approx(1.0 - MAX_LEAD_FRACTION, abs=0.01)
    clock.failed("run")
    assert clock.wait("run", 8.0) == pytest.approx(8.0 - MAX_LEAD_SECONDS, abs=0.01)
    clock.calling("run")


def test_the_start_up_follows_recent_retries_and_one_slow_start_does_not_move_it():
    clock = RetryClock()
    for _ in range(SAMPLES):
        retry(clock, 0.0, start_up=0.01)
    retry(clock, 0.0, start_up=0.3)
    assert clock.lead() < 0.06  # the median
    for _ in range(SAMPLES):
        retry(clock, 0.0, start_up=0.06)
    assert clock.lead() == pytest.approx(2 * 0.06 + MARGIN_SECONDS, abs=0.03)  # the old samples have gone


def test_a_first_attempt_is_neither_measured_nor_held():
    clock = RetryClock()
    started = time.monotonic()
    clock.calling("first attempt")
    assert time.monotonic() - started < 0.01 and clock.lead() == FIRST_LEAD_SECONDS

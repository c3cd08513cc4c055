"""The retry schedule of docs/behaviour.md §4: min(2**n, 240) seconds before retry n, no jitter."""

from __future__ import annotations

import pytest

from broadcasts.retry import (
    LAND_AFTER_EXPIRY_SECONDS,
    LONGEST_ALERT,
    MAX_DELAY_SECONDS,
    MAX_RETRIES,
    RETRY_DELAYS,
    SPARE_RETRIES,
    delay_before,
    planned_retries,
    retry_delay,
    scaled_delays,
)


@pytest.mark.parametrize(
    "retry_index, seconds",
    [(0, 1), (1, 2), (2, 4), (3, 8), (4, 16), (5, 32), (6, 64), (7, 128), (8, 240), (9, 240), (1000, 240)],
)
def test_retry_delay_doubles_from_one_second_and_caps_at_240(retry_index, seconds):
    assert retry_delay(retry_index) == seconds


def test_retry_delay_of_a_huge_index_is_the_cap_without_overflow():
    assert retry_delay(10**9) == 240


def test_retry_delays_list_is_the_schedule_up_to_the_cap():
    assert RETRY_DELAYS == [1, 2, 4, 8, 16, 32, 64, 128, 240]
    assert RETRY_DELAYS == [retry_delay(n) for n in range(9)]
    assert MAX_DELAY_SECONDS == 240 == RETRY_DELAYS[-1]


def test_the_schedule_has_no_jitter():
    assert [retry_delay(n) for n in range(20)] == [retry_delay(n) for n in range(20)]


def test_max_retries_keep_retrying_for_the_longest_alert():
    # The orchestrator repeats the last listed delay once retries outrun the list.
    waited = sum(RETRY_DELAYS[min(n, len(RETRY_DELAYS) - 1)] for n in range(MAX_RETRIES))
    assert waited >= LONGEST_ALERT.total_seconds()
    assert sum(retry_delay(n) for n in range(MAX_RETRIES)) == waited


def test_scaled_delays_multiplies_every_delay():
    assert scaled_delays(0.01) == pytest.approx([0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.4])
    assert len(scaled_delays(0.01)) == len(RETRY_DELAYS)


def test_scaled_delays_by_one_is_the_production_schedule():
    assert scaled_delays(1) == RETRY_DELAYS


@pytest.mark.parametrize(
    "seconds_left, planned",
    [(None, 0), (0, 0), (0.5, 1), (1, 1), (1.5, 2), (3, 2), (7, 3), (100, 7), (495, 9), (496, 10),
     (3600, 22), (LONGEST_ALERT.total_seconds(), 2527)],
)
def test_a_run_plans_just_enough_retries_to_reach_its_events_finish_time(seconds_left, planned):
    spares = 0 if seconds_left is None else SPARE_RETRIES
    assert planned_retries(seconds_left) == planned + spares


def test_the_longest_alert_is_planned_within_the_retry_ceiling():
    assert planned_retries(LONGEST_ALERT.total_seconds()) - SPARE_RETRIES <= MAX_RETRIES


def test_a_scaled_schedule_plans_as_many_retries_as_the_same_time_at_full_scale():
    assert planned_retries(10, scale=0.01) == planned_retries(1000)
    assert planned_retries(10, scale=0) == MAX_RETRIES + SPARE_RETRIES  # bounded, never a hang


@pytest.mark.parametrize(
    "retry_index, seconds_left, delay",
    [(0, 100, 1), (3, 100, 8), (6, 10, 10.5), (8, 30, 30.5), (8, 1000, 240), (2, None, 4), (8, -5, 240)],
)
def test_the_wait_that_would_pass_the_finish_time_is_cut_to_land_just_after_it(retry_index, seconds_left, delay):
    assert delay_before(retry_index, seconds_left) == delay


def test_the_planned_waits_end_just_after_the_finish_time():
    seconds_left, waited = 100.0, 0.0
    for index in range(planned_retries(seconds_left) - SPARE_RETRIES):
        waited += delay_before(index, seconds_left - waited)
    assert seconds_left < waited <= seconds_left + LAND_AFTER_EXPIRY_SECONDS

"""The retry schedule of SPEC §4: min(2**n, 240) seconds before retry n, no jitter."""

from __future__ import annotations

import pytest

from broadcasts.retry import (
    LONGEST_ALERT,
    MAX_DELAY_SECONDS,
    MAX_RETRIES,
    RETRY_DELAYS,
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

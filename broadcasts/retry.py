"""The retry schedule (docs/behaviour.md §4), declared once: delay before retry n is min(2**n, 240) seconds.

Each run plans its retries from the time its event has left: enough retries to reach the finish
time, with the wait that would pass it cut to land just after it, so the last attempt (which
finds the event expired and records so) comes at expiry, not up to 240 s later.
"""

from __future__ import annotations

import math
from datetime import timedelta

MAX_DELAY_SECONDS = 240
# Prefect repeats the last delay once retries outrun the list, so the list stops at the cap.
RETRY_DELAYS: list[float] = [1, 2, 4, 8, 16, 32, 64, 128, 240]
# Alerts last at most this long (refused at creation and by the checks); it bounds every plan.
LONGEST_ALERT = timedelta(days=7)
MAX_RETRIES = len(RETRY_DELAYS) + math.ceil(LONGEST_ALERT.total_seconds() / MAX_DELAY_SECONDS)
# The cut wait lands this long after the finish time, so that attempt finds the event expired.
LAND_AFTER_EXPIRY_SECONDS = 0.5
# Retries beyond the plan, used only when recording "expired while retrying" itself failed
# (the database was down): the next attempt records it instead.
SPARE_RETRIES = 3


def retry_delay(retry_index: int) -> float:
    """Seconds to wait before retry `retry_index` (0 for the first retry)."""
    return float(min(2 ** min(retry_index, 16), MAX_DELAY_SECONDS))


def scaled_delays(scale: float) -> list[float]:
    """The schedule multiplied by `scale` (tests and the demo only; production uses 1)."""
    return [delay * scale for delay in RETRY_DELAYS]


def planned_retries(seconds_left: float | None, scale: float = 1) -> int:
    """How many retries reach the finish time `seconds_left` away (attempts taking no time, so
    never too few), plus the spares. No finish time: none (the first attempt refuses it)."""
    if seconds_left is None:
        return 0
    waited, retries = 0.0, 0
    while waited < seconds_left and retries < MAX_RETRIES:
        waited += retry_delay(retries) * scale
        retries += 1
    return retries + SPARE_RETRIES


def delay_before(retry_index: int, seconds_left: float | None, scale: float = 1) -> float:
    """The wait before retry `retry_index`: the schedule's, cut to land just after the finish
    time when that is sooner. Once the event has expired the schedule's wait is kept (a spare
    retry, after a failed record)."""
    delay = retry_delay(retry_index) * scale
    if seconds_left is None or seconds_left <= 0:
        return delay
    return min(delay, seconds_left + LAND_AFTER_EXPIRY_SECONDS)

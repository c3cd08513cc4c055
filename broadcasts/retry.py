"""The retry schedule (SPEC §4), declared once: delay before retry n is min(2**n, 240) seconds."""

from __future__ import annotations

import math
from datetime import timedelta

MAX_DELAY_SECONDS = 240
# Prefect repeats the last delay once retries outrun the list, so the list stops at the cap.
RETRY_DELAYS: list[float] = [1, 2, 4, 8, 16, 32, 64, 128, 240]
# Alerts are never approved for longer than this; retries stop at expiry well before the count.
LONGEST_ALERT = timedelta(days=7)
MAX_RETRIES = len(RETRY_DELAYS) + math.ceil(LONGEST_ALERT.total_seconds() / MAX_DELAY_SECONDS)


def retry_delay(retry_index: int) -> float:
    """Seconds to wait before retry `retry_index` (0 for the first retry)."""
    return float(min(2 ** min(retry_index, 16), MAX_DELAY_SECONDS))


def scaled_delays(scale: float) -> list[float]:
    """The schedule multiplied by `scale` (tests and the demo only; production uses 1)."""
    return [delay * scale for delay in RETRY_DELAYS]

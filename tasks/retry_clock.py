"""Retry waits on plan: the next attempt's proxy call comes when the schedule says, not the
schedule plus the engine's own time.

Prefect sleeps the wait it is given from the moment it asks for it, and then the attempt still
has to start: its state, the cancel check, the database reads, the lock and the slot. On
PostgreSQL that came to 80-200 ms, so the 1 s wait was 8-20 % late. So the wait is counted from
the attempt's last answer (recording the failure takes time too), Prefect wakes the attempt a
little early (`lead`: twice the start-up time this process has measured lately, plus a margin,
or `FIRST_LEAD_SECONDS` before it has measured any, and never more than a quarter of the wait
or `MAX_LEAD_SECONDS`), the attempt does everything up
to the call, and the proxy call itself waits for the planned instant. So no call comes before
its plan, and one comes later only when an attempt's start-up outlasts the lead.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Hashable

SAMPLES = 9  # recent retries only: the start-up time moves with the machine's load
MARGIN_SECONDS = 0.02
FIRST_LEAD_SECONDS = 0.15
MAX_LEAD_FRACTION = 0.25
MAX_RECORDS = 10_000
MAX_LEAD_SECONDS = 0.5  # the slot is held while the call waits for its instant: keep that short


class RetryClock:
    """One process's retry timing. Keys name one retrying send (its task run)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failed: dict[Hashable, float] = {}
        self._woken: dict[Hashable, tuple[float, float]] = {}  # key -> (wake-up, planned call)
        self._start_ups: deque[float] = deque(maxlen=SAMPLES)

    def failed(self, key: Hashable, at: float | None = None) -> None:
        """The attempt has failed: its planned wait starts `at` (its last answer, time.monotonic()),
        or now."""
        with self._lock:
            self._failed[key] = time.monotonic() if at is None else at
            _trim(self._failed)

    def wait(self, key: Hashable, planned: float) -> float:
        """What to tell Prefect, asked now, for a planned wait of `planned` seconds."""
        now = time.monotonic()
        with self._lock:
            call_at = self._failed.pop(key, now) + planned
            lead = min(self.lead(), MAX_LEAD_FRACTION * planned)
            wait = max(0.0, call_at - lead - now)
            self._woken[key] = (now + wait, call_at)
            _trim(self._woken)
        return wait

    def calling(self, key: Hashable) -> None:
        """The attempt is about to call the proxy: after a retry's wait, notes how long its
        start-up took and waits for the planned instant."""
        with self._lock:
            woken, call_at = self._woken.pop(key, (None, None))
            now = time.monotonic()
            if woken is not None:
                self._start_ups.append(max(0.0, now - woken))
        if call_at is not None and call_at > now:
            time.sleep(call_at - now)

    def lead(self) -> float:
        if not self._start_ups:  # a process's first retry: what a start-up takes here, roughly
            return FIRST_LEAD_SECONDS
        return min(2 * statistics.median(self._start_ups) + MARGIN_SECONDS, MAX_LEAD_SECONDS)


def _trim(records: dict[Hashable, object]) -> None:
    """A send that stops retrying (it expired) leaves its record; the oldest go first."""
    while len(records) > MAX_RECORDS:
        records.pop(next(iter(records)))

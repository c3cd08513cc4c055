"""The record of every invocation the simulator received, in arrival order.

A record is created the moment a request arrives and completed when it is answered, so a call
whose client gave up (a hang, a read timeout) still leaves a trace. `outcome` is one of:

- `pending`: arrived, not answered yet (normally seen only for an instant, or during a delay);
- `hang`: held by a hang fault; it is never answered unless a reset releases it, and a reset also
  drops the record, so a `hang` record always has `responded_at` null;
- `ok`: answered 200 with a success payload;
- `function_error`: answered 200 with `X-Amz-Function-Error` (invalid payload or injected);
- `http_status`: answered with an HTTP error status (injected, unknown function, bad request).

Tests read these records to assert invariants over the whole history (ordering, no overlap).
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

OUTCOMES = ("pending", "hang", "ok", "function_error", "http_status")


def utc_now() -> str:
    """The current time as ISO-8601 UTC with microseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


@dataclass
class Invocation:
    function: str | None  # without the prefix; None when no such function exists
    function_name: str  # exactly as called, prefix included
    payload: Any  # the parsed JSON, or the raw text when the body is not JSON
    received_at: str
    outcome: str = "pending"
    status_code: int | None = None
    error: str | None = None
    xml: str | None = None
    fault: dict[str, Any] | None = None  # the injected fault that shaped this answer, if any
    responded_at: str | None = None


class Invocations:
    """Thread-safe, append-only (until `clear`) list of Invocation records."""

    def __init__(self) -> None:
        self._records: list[Invocation] = []
        self._lock = threading.Lock()

    def arrive(self, record: Invocation) -> Invocation:
        with self._lock:
            self._records.append(record)
        return record

    def mark_hanging(self, record: Invocation) -> None:
        with self._lock:
            record.outcome = "hang"

    def answer(
        self,
        record: Invocation,
        outcome: str,
        status_code: int,
        error: str | None = None,
        xml: str | None = None,
    ) -> None:
        """Complete `record`; harmless if a reset has already dropped it from the list."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}; expected one of {OUTCOMES}")
        with self._lock:
            record.outcome = outcome
            record.status_code = status_code
            record.error = error
            record.xml = xml
            record.responded_at = utc_now()

    def as_dicts(self, function: str | None = None) -> list[dict[str, Any]]:
        """Copies of the records in arrival order, optionally only those of one function."""
        with self._lock:
            return [asdict(r) for r in self._records if function is None or r.function == function]

    def clear(self) -> None:
        with self._lock:
            self._records = []

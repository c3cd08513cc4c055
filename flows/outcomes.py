"""Collect each provider's outcome and publish the per-provider table (shared by the send flows)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from prefect.artifacts import create_table_artifact
from prefect.futures import PrefectFuture

from broadcasts.db import get_engine, unit_of_work
from broadcasts.models import RETURNED_ACK, SUPERSEDED
from broadcasts.settings import get_settings
from broadcasts.status import event_status


def wait_for_all(providers: Sequence[str], futures: Sequence[PrefectFuture[Any]]) -> dict[str, str | None]:
    """Each provider's failure message, or None when its task completed. Reading every state is
    what stops a failed mapped task from passing silently."""
    failures: dict[str, str | None] = {}
    for provider, future in zip(providers, futures, strict=True):
        future.wait()
        state = future.state
        failures[provider] = None if state.is_completed() else f"{state.name}: {state.message or ''}"
    return failures


def publish_table(event_id: uuid.UUID, failures: dict[str, str | None]) -> list[dict[str, Any]]:
    """The table artifact `broadcast-event-<id>`: provider, status, identifier, message number,
    attempts, the route that acknowledged, last error; this run's providers first, then any others the event has. Rows come
    from the database, the record of what was really sent."""
    with unit_of_work(get_engine(get_settings().database_url)) as session:
        recorded = {s.provider: s.as_row() for s in event_status(session, event_id)}
    rows = []
    for provider in [*failures, *(p for p in recorded if p not in failures)]:
        row = recorded.get(provider) or {
            "provider": provider, "status": "not sent", "identifier": None,
            "message_number": None, "attempts": 0, "route": None, "last_error": None,
        }
        if failures.get(provider) and not row["last_error"]:
            row["last_error"] = failures[provider]
        rows.append(row)
    create_table_artifact(
        key=f"broadcast-event-{event_id}", table=rows, description=f"Provider sends of event {event_id}"
    )
    return rows


def unacknowledged(rows: list[dict[str, Any]], providers: Sequence[str]) -> list[str]:
    """The providers of this run that did not acknowledge, grouped by status and last error so a
    reason shared by several (a refusal, say) is said once: ["ee, three (refused: …)", "o2 (sending)"].
    A superseded provider is finished, not failed (docs/behaviour.md §4 rule 6): see `finished`."""
    groups: dict[tuple[str, str | None], list[str]] = {}
    for r in rows:
        if r["provider"] in providers and r["status"] not in (RETURNED_ACK, SUPERSEDED):
            groups.setdefault((r["status"], r["last_error"]), []).append(r["provider"])
    return [
        f"{', '.join(names)} ({status}: {error})" if error else f"{', '.join(names)} ({status})"
        for (status, error), names in groups.items()
    ]


def finished(event_id: uuid.UUID, rows: list[dict[str, Any]], providers: Sequence[str]) -> str:
    """The message of a run whose providers all finished: acknowledged, or superseded by a later
    cancel (not a failure), the cancel's reason said once for the providers that share it."""
    acked = [r["provider"] for r in rows if r["provider"] in providers and r["status"] == RETURNED_ACK]
    superseded: dict[str | None, list[str]] = {}
    for r in rows:
        if r["provider"] in providers and r["status"] == SUPERSEDED:
            superseded.setdefault(r["last_error"], []).append(r["provider"])
    parts = [f"acknowledged by {', '.join(acked)}"] if acked else []
    parts += [f"{', '.join(names)} {reason or SUPERSEDED}" for reason, names in superseded.items()]
    return f"event {event_id} {'; '.join(parts)}"

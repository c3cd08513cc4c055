"""How the `broadcasts` command shows an event's providers and their history to an operator:
one line per fact, failed routes one per line, no escaped JSON."""

from __future__ import annotations

from typing import Any

from broadcasts.status import HistoryEntry, ProviderStatus


def status_lines(statuses: list[ProviderStatus]) -> list[str]:
    lines = []
    for s in statuses:
        if s.identifier is None:
            lines.append(f"{s.provider}: {s.status} (no identifier allocated): {s.last_error}")
            continue
        lines.append(f"{s.provider}: {s.status}  identifier {s.identifier}"
                     + (f"  message number {s.message_number}" if s.message_number else ""))
        for entry in s.history:
            lines += ["    " + line for line in history_lines(entry)]
    return lines


def history_lines(entry: HistoryEntry) -> list[str]:
    """The entry's line, then one indented line per failed route."""
    parts = [entry.created_at.isoformat(timespec="milliseconds"), entry.status]
    parts += [f"attempt {entry.attempt}"] if entry.attempt else []
    parts += [f"via {entry.route}"] if entry.route else []
    detail: dict[str, Any] = entry.detail or {}
    routes = detail.get("failed_routes") or []
    error = detail.get("error")
    if error and routes:  # the routes are listed below; keep the headline
        error = error.split("; last attempt")[0] if "; last attempt" in error else error.split(" (")[0]
    parts += [text for text in (detail.get("reason"), error) if text]
    lines = ["  ".join(parts)]
    lines += [f"    {route['function']}: {route['error']}" for route in routes]
    if detail.get("slot_stuck"):
        lines.append(f"    slot: {detail['slot_stuck']}")
    return lines


def table_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The per-provider table; a reason every unacknowledged provider shares is printed once."""
    reasons = {r["last_error"] for r in rows if r["status"] != "returned-ack"}
    shared = len(rows) > 1 and len(reasons) == 1 and None not in reasons
    lines = [
        f"  {r['provider']:<9} {r['status']:<17} {r['identifier'] or '-':<36}  "
        f"number {r['message_number'] or '-'}  attempts {r['attempts']}"
        + (f"  last error: {r['last_error']}" if r["last_error"] and not shared else "")
        for r in rows
    ]
    if shared:
        lines.append(f"  why: {reasons.pop()}")
    return lines

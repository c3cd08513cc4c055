"""What the `broadcasts` command prints: an event's broadcast message and providers with their
history, a run's per-provider table, link tests and their history; one line per fact, failed
routes one per line, no escaped JSON (or, with --json, the same as JSON)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from broadcasts.errors import failed_route_name
from broadcasts.link_test_history import RouteHistory
from broadcasts.models import RouteAdvice
from broadcasts.status import HistoryEntry, MessageStatus, ProviderStatus


def status_output(event_id: uuid.UUID, statuses: list[ProviderStatus], as_json: bool,
                  message: MessageStatus | None = None) -> str:
    """With --json, the per-provider list only (its shape is what scripts read)."""
    if as_json:
        return json.dumps([{**s.as_row(), "history": [
            {**h.__dict__, "created_at": h.created_at.isoformat()} for h in s.history
        ]} for s in statuses], indent=2)
    lines = message_lines(message) if message is not None else []
    return "\n".join(lines + (status_lines(statuses) if statuses else [f"event {event_id}: nothing sent yet"]))


def message_lines(message: MessageStatus) -> list[str]:
    """The message's status and finish time, then each status change the dispatcher made."""
    finishes = message.finishes_at.isoformat(timespec="milliseconds") if message.finishes_at else "not set"
    return [f"broadcast message {message.broadcast_message_id}: {message.status}  finishes at {finishes}"] + [
        f"    {entry.created_at.isoformat(timespec='milliseconds')}  {entry.status}  {entry.reason}"
        for entry in message.history]


def run_output(state: Any, rows: list[dict[str, Any]], as_json: bool) -> str:
    """A run's state and its per-provider table."""
    if as_json:
        return json.dumps({"state": state.name, "message": state.message, "providers": rows}, indent=2)
    return "\n".join([f"{state.name}: {state.message}", *table_lines(rows)])


def link_test_output(state: Any, rows: list[dict[str, Any]], as_json: bool) -> str:
    if as_json:
        return json.dumps({"state": state.name, "message": state.message, "routes": rows}, indent=2)
    return "\n".join([f"{state.name}: {state.message}"] + [
        f"  {r['provider']:<9} {r['route']:<9} {'ok' if r['ok'] else 'FAILED':<7} "
        f"{r['latency_ms'] if r['latency_ms'] is not None else '-':>6} ms" + (f"  {r['error']}" if r["error"] else "")
        for r in rows])


def link_test_history_output(found: list[RouteHistory], since: str, as_json: bool,
                             advice: Sequence[RouteAdvice] = (), now: datetime | None = None) -> str:
    """Per route, its record; then (as text) the route advisor's route per network and its age."""
    if as_json:
        return json.dumps([h.as_row() for h in found], indent=2)
    lines = [
        f"  {h.provider:<9} {h.route:<13} {h.passes}/{h.runs} passed ({h.pass_rate:.0%})"
        + (f"  failing {h.consecutive_failures} in a row: {h.last_error}" if h.consecutive_failures else "")
        for h in found] or [f"no link tests in the last {since}"]
    if advice and now is not None:
        lines.append("route advisor (the last route that worked, tried first while fresh):")
        lines += [f"  {a.provider:<9} {a.lambda_name}/{a.target}  {(now - a.updated_at).total_seconds():.0f} s ago"
                  for a in advice]
    return "\n".join(lines)


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
    lines += [f"    {failed_route_name(route)}: {route['error']}" for route in routes]
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
        + (f"  via {r['route']}" if r.get("route") else "")
        + (f"  last error: {r['last_error']}" if r["last_error"] and not shared else "")
        for r in rows
    ]
    if shared:
        lines.append(f"  why: {reasons.pop()}")
    return lines

"""What happened to an event, per provider, and to its broadcast message: the rows behind
`broadcasts status` and the flow's table."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from broadcasts import dao
from broadcasts.payloads import message_number_hex
from broadcasts.providers import PROVIDERS


@dataclass(frozen=True)
class HistoryEntry:
    status: str
    created_at: datetime
    attempt: int | None
    route: str | None
    detail: dict[str, Any] | None


@dataclass(frozen=True)
class MessageHistoryEntry:
    status: str
    reason: str
    created_at: datetime


@dataclass(frozen=True)
class MessageStatus:
    """The event's broadcast message: its status now, its finish time, and the status changes the
    dispatcher made (auto-expiry)."""

    broadcast_message_id: uuid.UUID
    status: str
    finishes_at: datetime | None
    history: list[MessageHistoryEntry]


REFUSED = "refused"  # shown for a provider whose send was refused: no provider message exists


@dataclass(frozen=True)
class ProviderStatus:
    provider: str
    status: str
    identifier: uuid.UUID | None
    message_number: str | None
    attempts: int
    last_error: str | None
    route: str | None = None  # the route that acknowledged it: `ee-1-proxy/cbc_b`
    history: list[HistoryEntry] = field(default_factory=list)

    def as_row(self) -> dict[str, Any]:
        """One line of the per-provider table (no history)."""
        return {
            "provider": self.provider,
            "status": self.status,
            "identifier": str(self.identifier) if self.identifier else None,
            "message_number": self.message_number,
            "attempts": self.attempts,
            "route": self.route,
            "last_error": self.last_error,
        }


def event_status(session: Session, event_id: uuid.UUID) -> list[ProviderStatus]:
    """Every provider message of the event, and every refused provider (no message, so no
    identifier), in the provider table's order (raises UnknownEvent)."""
    dao.get_event(session, event_id)
    found = {}
    for message in dao.provider_messages(session, [event_id]):
        rows = dao.history(session, message.id)
        errors = [r.detail["error"] for r in rows if r.detail and r.detail.get("error")]
        last_error = errors[-1] if errors and message.status != "returned-ack" else None
        latest = (rows[-1].detail or {}) if rows else {}
        if latest.get("waiting_for") or latest.get("superseded_by"):  # what it waits for, or which cancel
            last_error = latest["reason"]
        number = message.message_number
        found[message.provider] = ProviderStatus(
            provider=message.provider,
            status=message.status,
            identifier=message.id,
            message_number=message_number_hex(number) if number is not None else None,
            attempts=max((r.attempt or 0 for r in rows), default=0),
            last_error=last_error,
            route=next((r.route for r in rows if r.status == "returned-ack"), None),
            history=[HistoryEntry(r.status, r.created_at, r.attempt, r.route, r.detail) for r in rows],
        )
    for provider, refusal in dao.refusals(session, event_id).items():
        if provider not in found:
            found[provider] = ProviderStatus(provider, REFUSED, None, None, 0, refusal.reason)
    return [found[p] for p in PROVIDERS if p in found]


def message_status(session: Session, event_id: uuid.UUID) -> MessageStatus:
    """The broadcast message of the event and its history, oldest first (raises UnknownEvent)."""
    message = dao.get_event(session, event_id).broadcast_message
    return MessageStatus(message.id, message.status, message.finishes_at, [
        MessageHistoryEntry(row.status, row.reason, row.created_at) for row in dao.message_history(session, message.id)])

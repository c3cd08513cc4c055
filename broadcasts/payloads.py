"""The JSON each CBC proxy receives (docs/behaviour.md §3): one pure builder for every provider and message type.

Glossary: CAP is the OASIS Common Alerting Protocol 1.2; IBAG is the XML the Vodafone proxy
speaks. The proxies turn these payloads into that XML; `references` lets an update or cancel name
the earlier messages it replaces.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from broadcasts.errors import PayloadError
from broadcasts.models import BroadcastEvent
from broadcasts.providers import Provider
from broadcasts.validation import is_welsh


@dataclass(frozen=True)
class Reference:
    """An earlier event's provider message for the same provider."""

    message_id: uuid.UUID
    sent: datetime
    message_number: int | None


def cap_time(moment: datetime) -> str:
    """`YYYY-MM-DDThh:mm:ss-00:00`: UTC, whole seconds, the form CAP 1.2 requires."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S-00:00")


def message_number_hex(number: int) -> str:
    return f"{number:08x}"


def _numbered(provider: Provider, payload: dict[str, Any], number: int | None) -> dict[str, Any]:
    if provider.numbered:
        if number is None:
            raise PayloadError(f"{provider.name} needs a message number and none was allocated")
        payload["message_number"] = message_number_hex(number)
    return payload


def _references(provider: Provider, references: list[Reference]) -> list[dict[str, Any]]:
    return [
        _numbered(
            provider,
            {"message_id": str(reference.message_id), "sent": cap_time(reference.sent)},
            reference.message_number,
        )
        for reference in references
    ]


def build_payload(
    provider: Provider,
    event: BroadcastEvent,
    *,
    identifier: uuid.UUID,
    message_number: int | None,
    references: list[Reference],
    channel: str,
    headline: str,
) -> dict[str, Any]:
    """The payload for `event` to `provider`; `references` are the earlier events', oldest first."""
    if event.message_type == "cancel":
        payload: dict[str, Any] = {
            "message_type": "cancel",
            "identifier": str(identifier),
            "message_format": provider.message_format,
            "references": _references(provider, references),
            "sent": cap_time(event.sent_at),
        }
        return _numbered(provider, payload, message_number)

    content = event.transmitted_content
    description = content.get("body") if isinstance(content, dict) else None
    if not description or event.finishes_at is None:
        raise PayloadError(f"event {event.id} has no body or no finish time")
    payload = {
        "message_type": event.message_type,
        "identifier": str(identifier),
        "message_format": provider.message_format,
        "headline": headline,
        "description": description,
        "areas": [{"polygon": p} for p in event.transmitted_areas["simple_polygons"]],
        "sent": cap_time(event.sent_at),
        "expires": cap_time(event.finishes_at),
        "language": provider.language(welsh=is_welsh(description)),
        "channel": channel,
    }
    if event.message_type == "update":
        payload["references"] = _references(provider, references)
    return _numbered(provider, payload, message_number)


def build_link_test_payload(
    provider: Provider, identifier: uuid.UUID, message_number: int | None
) -> dict[str, Any]:
    payload = {
        "message_type": "test",
        "identifier": str(identifier),
        "message_format": provider.message_format,
    }
    return _numbered(provider, payload, message_number)

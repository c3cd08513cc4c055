"""Rows as the service API writes them, with any field overridable (including invalid ones)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from broadcasts.db import unit_of_work
from broadcasts.models import (
    BroadcastEvent,
    BroadcastMessage,
    Service,
    ServiceBroadcastProvider,
    ServiceBroadcastSettings,
    utcnow,
)

SQUARE = [[51.50, -0.12], [51.52, -0.12], [51.52, -0.10], [51.50, -0.10]]


def make_service(
    engine: Engine,
    *,
    channel: str | None = "severe",
    providers: list[str] | None = None,
    active: bool = True,
    restricted: bool = False,
) -> uuid.UUID:
    with unit_of_work(engine) as session:
        service = Service(id=uuid.uuid4(), name="test service", active=active, restricted=restricted)
        session.add(service)
        session.flush()
        if channel:
            session.add(ServiceBroadcastSettings(service_id=service.id, channel=channel))
        for provider in providers or []:
            session.add(ServiceBroadcastProvider(service_id=service.id, provider=provider))
        return service.id


def make_message(
    engine: Engine, service_id: uuid.UUID, *, stubbed: bool = False, content: str = "Flood warning"
) -> uuid.UUID:
    with unit_of_work(engine) as session:
        message = BroadcastMessage(
            service_id=service_id, content=content, areas={"names": [], "simple_polygons": [SQUARE]},
            status="broadcasting", starts_at=utcnow(), finishes_at=utcnow() + timedelta(hours=1),
            stubbed=stubbed,
        )
        session.add(message)
        session.flush()
        return message.id


def make_event(
    engine: Engine,
    service_id: uuid.UUID,
    message_id: uuid.UUID,
    *,
    message_type: str = "alert",
    sent_at: datetime | None = None,
    body: str = "Flood warning",
    polygons: Any = None,
    finishes_at: datetime | None = None,
    expires_in: timedelta = timedelta(hours=1),
) -> uuid.UUID:
    sent_at = sent_at or utcnow()
    with unit_of_work(engine) as session:
        event = BroadcastEvent(
            service_id=service_id, broadcast_message_id=message_id, sent_at=sent_at,
            message_type=message_type, transmitted_content={"body": body},
            transmitted_areas={"names": [], "simple_polygons": [SQUARE] if polygons is None else polygons},
            transmitted_sender="tests", transmitted_starts_at=sent_at,
            transmitted_finishes_at=finishes_at or utcnow() + expires_in,
        )
        session.add(event)
        session.flush()
        return event.id


def make_alert(engine: Engine, **service_options: Any) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """(service id, message id, alert event id) for a fresh live service."""
    service_id = make_service(engine, **service_options)
    message_id = make_message(engine, service_id)
    return service_id, message_id, make_event(engine, service_id, message_id)

"""Writing broadcast events the way the service API does (used by the CLI, the demo and tests)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from broadcasts.errors import InvalidInput
from broadcasts.models import (
    BroadcastEvent,
    BroadcastMessage,
    Service,
    ServiceBroadcastProvider,
    ServiceBroadcastSettings,
)
from broadcasts.providers import CHANNELS, PROVIDERS
from broadcasts.retry import LONGEST_ALERT
from broadcasts.validation import areas_problems, content_problems

MESSAGE_STATUS_AFTER = {"alert": "broadcasting", "update": "broadcasting", "cancel": "cancelled"}


@dataclass(frozen=True)
class CreatedEvent:
    service_id: uuid.UUID
    broadcast_message_id: uuid.UUID
    broadcast_event_id: uuid.UUID

    def as_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.__dict__.items()}


def create_event(
    session: Session,
    *,
    message_type: str,
    now: datetime,
    body: str | None = None,
    polygons: list[list[list[float]]] | None = None,
    finishes_in: timedelta | None = None,
    message_id: uuid.UUID | None = None,
    service_id: uuid.UUID | None = None,
    channel: str | None = None,
    providers: list[str] | None = None,
    stubbed: bool = False,
) -> CreatedEvent:
    """Creates the event, and the service, its settings and the message when not given.

    An alert starts a new message; an update or cancel continues `message_id` (neither cancelled
    nor finished) and inherits what it does not override; a cancel carries no body or areas.
    Raises InvalidInput (and writes nothing) on anything malformed.
    """
    if message_type not in MESSAGE_STATUS_AFTER:
        raise InvalidInput(f"message type {message_type!r} is not one of alert, update, cancel")
    if channel is not None and channel not in CHANNELS:
        raise InvalidInput(f"channel {channel!r} is not one of {', '.join(CHANNELS)}")
    unknown = [p for p in providers or [] if p not in PROVIDERS]
    if unknown:
        raise InvalidInput(f"unknown provider(s) {', '.join(unknown)}; known: {', '.join(PROVIDERS)}")
    if finishes_in is not None and finishes_in <= timedelta(0):
        raise InvalidInput("--finishes-in must be a positive duration")
    if finishes_in is not None and finishes_in > LONGEST_ALERT:
        raise InvalidInput(
            f"--finishes-in {_days(finishes_in)} is longer than the longest alert, {_days(LONGEST_ALERT)} "
            "(retries are planned to cover at most that)"
        )

    message = _existing_message(session, message_type, message_id, service_id, now)
    if message_type == "cancel" and (body is not None or polygons):
        raise InvalidInput("a cancel carries no --body or --polygon: it withdraws the broadcast as it is")
    if message is None:
        service = _service(session, service_id, channel, providers)
        if body is None or polygons is None or finishes_in is None:
            raise InvalidInput("a new broadcast needs --body, at least one --polygon and --finishes-in")
        message = BroadcastMessage(
            service_id=service.id, content=body, areas={"names": [], "simple_polygons": polygons},
            status="broadcasting", starts_at=now, finishes_at=now + finishes_in, stubbed=stubbed,
            created_at=now,
        )
        session.add(message)
    elif channel or providers or stubbed:
        raise InvalidInput("--channel, --providers and --stubbed apply only to a new broadcast")

    areas = {"names": [], "simple_polygons": polygons} if polygons else message.areas
    content = body if body is not None else message.content
    finishes_at = now + finishes_in if finishes_in else message.finishes_at
    problems = [] if message_type == "cancel" else content_problems(content) + areas_problems(areas)
    if problems:
        raise InvalidInput("; ".join(problems))
    message.status = MESSAGE_STATUS_AFTER[message_type]
    message.content, message.areas, message.finishes_at = content, areas, finishes_at
    event = BroadcastEvent(
        service_id=message.service_id,
        broadcast_message=message,
        sent_at=now,
        message_type=message_type,
        transmitted_content={"body": content},
        transmitted_areas=areas,
        transmitted_sender="broadcasts",
        transmitted_starts_at=message.starts_at,
        transmitted_finishes_at=finishes_at,
    )
    session.add(event)
    session.flush()
    return CreatedEvent(message.service_id, message.id, event.id)


def _days(duration: timedelta) -> str:
    return f"{duration.total_seconds() / 86400:g} days"


def _existing_message(
    session: Session, message_type: str, message_id: uuid.UUID | None, service_id: uuid.UUID | None,
    now: datetime,
) -> BroadcastMessage | None:
    if message_id is None:
        if message_type != "alert":
            raise InvalidInput(f"an {message_type} continues a broadcast: give --message ID")
        return None
    if message_type == "alert":
        raise InvalidInput("an alert starts a new broadcast; use --type update to change one")
    message = session.get(BroadcastMessage, message_id)
    if message is None:
        raise InvalidInput(f"no broadcast message with id {message_id}")
    if message.status == "cancelled":
        raise InvalidInput(f"broadcast message {message_id} is cancelled: it takes no {message_type}")
    if message.finishes_at is not None and message.finishes_at <= now:
        raise InvalidInput(
            f"broadcast message {message_id} finished at {message.finishes_at.isoformat()}: "
            f"it takes no {message_type}"
        )
    if service_id is not None and service_id != message.service_id:
        raise InvalidInput(f"broadcast message {message_id} belongs to service {message.service_id}")
    return message


def _service(
    session: Session, service_id: uuid.UUID | None, channel: str | None, providers: list[str] | None
) -> Service:
    if service_id is not None:
        service = session.get(Service, service_id)
        if service is None:
            raise InvalidInput(f"no service with id {service_id}")
        if channel or providers:
            raise InvalidInput("--channel and --providers apply only to a new service")
        return service
    service = Service(id=uuid.uuid4(), name="Emergency alerts (created by broadcasts event create)")
    session.add(service)
    session.flush()
    session.add(ServiceBroadcastSettings(service_id=service.id, channel=channel or "test"))
    session.add_all(ServiceBroadcastProvider(service_id=service.id, provider=p) for p in providers or [])
    return service

"""Named queries. Every function takes the session explicitly and never commits
(`db.unit_of_work` does). The status history is only ever inserted into.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, joinedload
from sqlalchemy.orm.attributes import set_committed_value

from broadcasts.errors import UnknownEvent
from broadcasts.models import (
    BROADCASTING,
    COMPLETED,
    NUMBER_SEQUENCE,
    RETURNED_ACK,
    SENDING,
    SUPERSEDED,
    UNFINISHED_STATUSES,
    BroadcastEvent,
    BroadcastEventRefusal,
    BroadcastMessage,
    BroadcastMessageHistory,
    BroadcastProviderMessage,
    BroadcastProviderMessageNumber,
    BroadcastProviderMessageStatus,
    LinkTestResult,
    Service,
    UTCDateTime,
    utcnow,
)


def get_event(session: Session, event_id: uuid.UUID) -> BroadcastEvent:
    """The event, with its broadcast message and service loaded in the same statement (rule 1
    reads both), and the service's networks and channel (`service_providers`, `channel`)."""
    event = session.get(BroadcastEvent, event_id, options=[
        joinedload(BroadcastEvent.broadcast_message),
        joinedload(BroadcastEvent.service).options(joinedload(Service.broadcast_providers),
                                                   joinedload(Service.broadcast_settings)),
    ])
    if event is None:
        raise UnknownEvent(event_id)
    return event


# The order of a broadcast's events (docs/behaviour.md §4 rule 5), as `BroadcastEvent.order_key`.
EVENT_ORDER = (BroadcastEvent.sent_at, BroadcastEvent.created_at, BroadcastEvent.id)


def earlier_events_and_later_cancels(
    session: Session, event: BroadcastEvent
) -> tuple[list[BroadcastEvent], list[BroadcastEvent]]:
    """The events of the same broadcast message before `event` in the order (`sent_at`, then
    creation, then id: `BroadcastEvent.order_key`), oldest first, and its cancels after `event`,
    in one statement (a send's checks read both)."""
    others = session.scalars(
        select(BroadcastEvent)
        .where(BroadcastEvent.broadcast_message_id == event.broadcast_message_id, BroadcastEvent.id != event.id)
        .order_by(*EVENT_ORDER)
    ).all()
    return ([e for e in others if e.order_key < event.order_key],
            [e for e in others if e.order_key > event.order_key and e.message_type == "cancel"])


def earlier_events(session: Session, event: BroadcastEvent) -> list[BroadcastEvent]:
    return earlier_events_and_later_cancels(session, event)[0]


def later_cancels(session: Session, event: BroadcastEvent) -> list[BroadcastEvent]:
    return earlier_events_and_later_cancels(session, event)[1]


def service_providers(service: Service, enabled: Sequence[str]) -> list[str]:
    """The service's allowed providers ∩ the enabled ones, in enabled order (no rows: all enabled)."""
    allowed = {row.provider for row in service.broadcast_providers}
    return [name for name in enabled if not allowed or name in allowed]


def available_providers(session: Session, service_id: uuid.UUID, enabled: Sequence[str]) -> list[str]:
    """`service_providers` of a service read by its id."""
    service = session.get(Service, service_id, options=[joinedload(Service.broadcast_providers)])
    return list(enabled) if service is None else service_providers(service, enabled)


def channel(service: Service) -> str:
    return service.broadcast_settings.channel if service.broadcast_settings else "test"


def next_message_number(session: Session) -> int:
    """Draws from the one sequence shared by provider messages and link tests."""
    if session.get_bind().dialect.name == "postgresql":
        return int(session.scalar(select(func.nextval(NUMBER_SEQUENCE))))
    # SQLite has no sequences: a one-row counter, safe because every write holds the write lock.
    return int(
        session.execute(
            text(f"UPDATE {NUMBER_SEQUENCE} SET last_value = last_value + 1 RETURNING last_value")
        ).scalar_one()
    )


def get_provider_message(
    session: Session, event_id: uuid.UUID, provider: str
) -> BroadcastProviderMessage | None:
    return session.scalar(
        select(BroadcastProviderMessage).where(
            BroadcastProviderMessage.broadcast_event_id == event_id,
            BroadcastProviderMessage.provider == provider,
        )
    )


def get_or_create_provider_message(
    session: Session, event_id: uuid.UUID, provider: str, numbered: bool
) -> BroadcastProviderMessage:
    """The one provider message for (event, provider), created with status `sending`, its first
    history row and (when `numbered`) its message number, all in the caller's transaction.

    When two processes race, the unique constraint lets exactly one insert win; the other's
    insert does nothing and it reads the winner's row.
    """
    existing = get_provider_message(session, event_id, provider)
    if existing is not None:
        return existing
    return create_provider_message(session, event_id, provider, numbered)


def create_provider_message(
    session: Session, event_id: uuid.UUID, provider: str, numbered: bool
) -> BroadcastProviderMessage:
    """`get_or_create_provider_message` for a caller that has just read, in this transaction,
    that there is none yet (another process may still win the race: its row is returned)."""
    new_id = uuid.uuid4()
    now = utcnow()
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    inserted = session.scalars(
        insert(BroadcastProviderMessage)
        .values(
            id=new_id,
            broadcast_event_id=event_id,
            provider=provider,
            status=SENDING,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["broadcast_event_id", "provider"])
        .returning(BroadcastProviderMessage)
    ).one_or_none()
    if inserted is not None:  # ours: its number and first history row go with it
        number = BroadcastProviderMessageNumber(
            broadcast_provider_message_number=next_message_number(session),
            broadcast_provider_message_id=new_id,
        ) if numbered else None
        if number is not None:
            session.add(number)
        set_committed_value(inserted, "number", number)  # known: no read to load it
        session.add(
            BroadcastProviderMessageStatus(
                broadcast_provider_message_id=new_id, status=SENDING, created_at=now
            )
        )
        session.flush()
        return inserted
    message = get_provider_message(session, event_id, provider)
    assert message is not None, "the winning insert is committed before the loser reads"
    return message


def append_status(
    session: Session,
    message: BroadcastProviderMessage,
    status: str,
    *,
    route: str | None = None,
    attempt: int | None = None,
    detail: dict[str, Any] | None = None,
) -> BroadcastProviderMessageStatus | None:
    """Makes `status` current and adds its history row, in one transaction. An acknowledged
    message keeps `returned-ack` for good, a superseded one changes only to `returned-ack` (a
    call's acknowledgement is the truth about its identifier, even from a run that lost its lock
    during the call), and only a send still under way (`sending`, `returned-error`) becomes
    superseded: otherwise nothing is written and None is returned.

    The status update runs first: it locks the row, so concurrent writers take their history
    ids in the order they commit and the newest history row is always the current status.
    """
    now = utcnow()
    final = (RETURNED_ACK,) if status == RETURNED_ACK else (RETURNED_ACK, SUPERSEDED)
    # In the UPDATE, not read before it: a technical-failure written meanwhile is never overwritten.
    allowed = (BroadcastProviderMessage.status.in_(UNFINISHED_STATUSES) if status == SUPERSEDED
               else BroadcastProviderMessage.status.notin_(final))
    changed = session.execute(
        update(BroadcastProviderMessage)
        .where(BroadcastProviderMessage.id == message.id, allowed)
        .values(status=status, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if not changed:
        session.refresh(message)
        return None
    row = BroadcastProviderMessageStatus(
        broadcast_provider_message_id=message.id,
        status=status,
        route=route,
        attempt=attempt,
        detail=detail,
        created_at=now,
    )
    session.add(row)
    set_committed_value(message, "status", status)  # written by the UPDATE above: not again by a flush
    session.flush()
    return row


def fix_payload(session: Session, message: BroadcastProviderMessage, payload: dict[str, Any]) -> dict[str, Any]:
    """The payload this identifier is sent with: `payload` if none was fixed yet, else the one
    fixed by the first attempt (whichever of two racing runs wrote first)."""
    fixed = session.execute(
        update(BroadcastProviderMessage)
        .where(BroadcastProviderMessage.id == message.id, BroadcastProviderMessage.payload.is_(None))
        .values(payload=payload)
        .returning(BroadcastProviderMessage.payload)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if fixed is not None:
        set_committed_value(message, "payload", fixed)
        return fixed
    session.refresh(message, ["payload"])
    assert message.payload is not None
    return message.payload


def latest_history_row(session: Session, message_id: uuid.UUID) -> BroadcastProviderMessageStatus | None:
    return session.scalar(
        select(BroadcastProviderMessageStatus)
        .where(BroadcastProviderMessageStatus.broadcast_provider_message_id == message_id)
        .order_by(BroadcastProviderMessageStatus.id.desc())
        .limit(1)
    )


def record_refusal(session: Session, event_id: uuid.UUID, provider: str, reason: str) -> bool:
    """Appends why (event, provider) was refused, unless that is already the latest reason."""
    latest = session.scalar(
        select(BroadcastEventRefusal.reason)
        .where(BroadcastEventRefusal.broadcast_event_id == event_id, BroadcastEventRefusal.provider == provider)
        .order_by(BroadcastEventRefusal.id.desc())
        .limit(1)
    )
    if latest == reason:
        return False
    session.add(BroadcastEventRefusal(broadcast_event_id=event_id, provider=provider, reason=reason,
                                      created_at=utcnow()))
    session.flush()
    return True


def refusal_reasons(session: Session, event_ids: Sequence[uuid.UUID], provider: str) -> dict[uuid.UUID, str]:
    """The latest refusal reason of `provider` for each of these events that has one."""
    if not event_ids:  # the usual case on the send path: every earlier event has a provider message
        return {}
    rows = session.execute(
        select(BroadcastEventRefusal.broadcast_event_id, BroadcastEventRefusal.reason)
        .where(BroadcastEventRefusal.broadcast_event_id.in_(list(event_ids)),
               BroadcastEventRefusal.provider == provider)
        .order_by(BroadcastEventRefusal.id)
    )
    return {event_id: reason for event_id, reason in rows}


def refusals(session: Session, event_id: uuid.UUID) -> dict[str, BroadcastEventRefusal]:
    """The latest refusal of each provider for the event."""
    rows = session.scalars(
        select(BroadcastEventRefusal)
        .where(BroadcastEventRefusal.broadcast_event_id == event_id)
        .order_by(BroadcastEventRefusal.id)
    )
    return {row.provider: row for row in rows}


def history(session: Session, message_id: uuid.UUID) -> list[BroadcastProviderMessageStatus]:
    return list(
        session.scalars(
            select(BroadcastProviderMessageStatus)
            .where(BroadcastProviderMessageStatus.broadcast_provider_message_id == message_id)
            .order_by(BroadcastProviderMessageStatus.id)
        )
    )


def current_status(session: Session, message_id: uuid.UUID) -> str | None:
    return session.scalar(
        select(BroadcastProviderMessage.status).where(BroadcastProviderMessage.id == message_id)
    )


def attempts_so_far(session: Session, message_id: uuid.UUID) -> int:
    """How many proxy attempts the history records for this provider message (over all runs)."""
    return int(
        session.scalar(
            select(func.coalesce(func.max(BroadcastProviderMessageStatus.attempt), 0)).where(
                BroadcastProviderMessageStatus.broadcast_provider_message_id == message_id
            )
        )
    )


def provider_messages(session: Session, event_ids: Sequence[uuid.UUID], provider: str | None = None
) -> list[BroadcastProviderMessage]:
    query = select(BroadcastProviderMessage).where(
        BroadcastProviderMessage.broadcast_event_id.in_(list(event_ids))
    )
    if provider is not None:
        query = query.where(BroadcastProviderMessage.provider == provider)
    return list(session.scalars(query))


def record_link_test_result(
    session: Session,
    *,
    provider: str,
    route: str,
    identifier: uuid.UUID,
    message_number: int | None,
    ok: bool,
    detail: dict[str, Any] | None,
) -> LinkTestResult:
    row = LinkTestResult(
        provider=provider,
        route=route,
        identifier=identifier,
        message_number=message_number,
        ok=ok,
        detail=detail,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row


def link_test_results(session: Session, since: datetime, provider: str | None = None) -> list[LinkTestResult]:
    """Link-test results created at or after `since` (optionally of one provider), oldest first."""
    query = select(LinkTestResult).where(LinkTestResult.created_at >= since)
    if provider is not None:
        query = query.where(LinkTestResult.provider == provider)
    return list(session.scalars(query.order_by(LinkTestResult.created_at, LinkTestResult.id)))


def unexpired_events_written_by(session: Session, now: datetime, written_by: datetime) -> list[BroadcastEvent]:
    """Events that may still be sent, oldest first: written at or before `written_by`, not yet at
    their finish time (the event's own, else its message's) at `now`, of a message that is not
    stubbed, of an active service that is not in trial mode. Expired events are never loaded."""
    finishes_at = func.coalesce(
        BroadcastEvent.transmitted_finishes_at, BroadcastMessage.finishes_at, type_=UTCDateTime()
    )
    query = (
        select(BroadcastEvent)
        .join(BroadcastMessage, BroadcastMessage.id == BroadcastEvent.broadcast_message_id)
        .join(Service, Service.id == BroadcastEvent.service_id)
        .where(
            finishes_at > now,
            BroadcastEvent.sent_at <= written_by,
            BroadcastMessage.stubbed.is_(False),
            Service.active.is_(True),
            Service.restricted.is_(False),
        )
        .order_by(*EVENT_ORDER)
    )
    return list(session.scalars(query))


def refused_providers(session: Session, event_ids: Sequence[uuid.UUID]) -> set[tuple[uuid.UUID, str]]:
    """Every (event, provider) of these events with at least one refusal."""
    rows = session.execute(
        select(BroadcastEventRefusal.broadcast_event_id, BroadcastEventRefusal.provider)
        .where(BroadcastEventRefusal.broadcast_event_id.in_(list(event_ids)))
        .distinct()
    )
    return {(event_id, provider) for event_id, provider in rows}


def complete_finished_messages(session: Session, now: datetime) -> list[BroadcastMessage]:
    """Moves every `broadcasting` message whose `finishes_at` is before `now` to `completed`, and
    returns the messages this call changed, oldest finish first.

    One conditional UPDATE … RETURNING: a message another transaction completed first no longer
    matches, so concurrent callers never both return it. On PostgreSQL the candidates are locked
    in id order and skipped when another caller holds them (that caller completes them), so two
    callers neither deadlock nor wait; on SQLite every write transaction holds the write lock.
    """
    due = (
        select(BroadcastMessage.id)
        .where(BroadcastMessage.status == BROADCASTING, BroadcastMessage.finishes_at < now)
        .order_by(BroadcastMessage.id)
        .with_for_update(skip_locked=True)
    )
    changed = session.scalars(
        update(BroadcastMessage)
        .where(BroadcastMessage.id.in_(due), BroadcastMessage.status == BROADCASTING)
        .values(status=COMPLETED, updated_at=now)
        .returning(BroadcastMessage)
        .execution_options(synchronize_session=False)
    ).all()
    return sorted(changed, key=lambda message: (message.finishes_at, message.id))


def append_message_history(session: Session, message_id: uuid.UUID, status: str, reason: str,
                           now: datetime) -> None:
    session.add(BroadcastMessageHistory(broadcast_message_id=message_id, status=status, reason=reason,
                                        created_at=now))
    session.flush()


def message_history(session: Session, message_id: uuid.UUID) -> list[BroadcastMessageHistory]:
    return list(session.scalars(
        select(BroadcastMessageHistory)
        .where(BroadcastMessageHistory.broadcast_message_id == message_id)
        .order_by(BroadcastMessageHistory.id)
    ))

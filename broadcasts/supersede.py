"""A cancel supersedes an alert or update that its network has not acknowledged (docs/behaviour.md
§4 rule 6).

Once a broadcast is cancelled, none of its alerts or updates may start reaching a network that
has not acknowledged them: that network is sent the cancel instead, and the pending send ends
`superseded`, which is final and not a failure. A network may still hold the alert from an
attempt whose answer was lost, so the cancel is sent all the same and refers to it.

The decision is taken only under the provider message's send lock (`send_lock`), as every record
of a send is: a call in flight is recorded by the run that made it. Acknowledged, it stays
`returned-ack` and the cancel refers to it; failed, the next attempt (the alert's own, or the
cancel's) finds it no longer in flight and supersedes it. `returned-ack` never changes, and a
`technical-failure` message is left to the operator (docs/behaviour.md §2).
"""

from __future__ import annotations

import uuid

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from broadcasts import dao, send_lock
from broadcasts.db import unit_of_work
from broadcasts.errors import Superseded
from broadcasts.models import SUPERSEDED, UNFINISHED_STATUSES, BroadcastEvent, BroadcastProviderMessage
from broadcasts.providers import Provider


def superseding_cancel(session: Session, event: BroadcastEvent) -> BroadcastEvent | None:
    """The first cancel after this alert or update in its broadcast's order (§4 rule 5), or None.
    A cancel is never superseded."""
    if event.message_type == "cancel":
        return None
    return first(dao.later_cancels(session, event))


def first(cancels: list[BroadcastEvent]) -> BroadcastEvent | None:
    """The first of these later cancels in the broadcast's order: the one that supersedes."""
    return min(cancels, key=lambda cancel: cancel.order_key, default=None)


def under_lock(session: Session, event: BroadcastEvent, message: BroadcastProviderMessage) -> Superseded | None:
    """Rule 6 for the event's provider message, whose send lock the caller holds: the Superseded
    to raise when it is (or now becomes) superseded, else None. Records the `superseded` row when
    a later cancel exists and the message is still under way."""
    if message.status == SUPERSEDED:
        return recorded(session, message)
    cancel = superseding_cancel(session, event)
    if cancel is None or message.status not in UNFINISHED_STATUSES:
        return None
    return _record(session, message, cancel.id)


def recorded(session: Session, message: BroadcastProviderMessage) -> Superseded:
    """The Superseded of a message that already ended superseded (its newest history row says by
    which cancel, since the status never changes again)."""
    row = dao.latest_history_row(session, message.id)
    cancel_id = (row.detail or {}).get("superseded_by") if row is not None else None
    return Superseded(message.broadcast_event_id, message.provider, uuid.UUID(cancel_id) if cancel_id else None,
                      message.id, message.message_number)


def earlier_for_cancel(session: Session, cancel: BroadcastEvent, provider: Provider) -> list[uuid.UUID]:
    """The provider messages a cancel's attempt supersedes (with `each`) before its own checks of
    rule 5: its broadcast's earlier alerts and updates still under way for `provider`. One never
    attempted gets its provider message now, so the cancel refers to its identifier (a cancel must
    refer to something) and its own run finds it superseded; a refused one has no identifier and
    gets none. Only the events before the broadcast's first cancel: one written after a cancel is
    refused, not superseded (rule 1), and allocates no identifier."""
    events = dao.earlier_events(session, cancel)
    first_cancel = next((i for i, e in enumerate(events) if e.message_type == "cancel"), len(events))
    earlier = [e.id for e in events[:first_cancel]]
    messages = {m.broadcast_event_id: m for m in dao.provider_messages(session, earlier, provider.name)}
    refused = dao.refusal_reasons(session, [e for e in earlier if e not in messages], provider.name)
    for event_id in earlier:
        if event_id not in messages and event_id not in refused:
            messages[event_id] = dao.get_or_create_provider_message(session, event_id, provider.name, provider.numbered)
    return [m.id for m in messages.values() if m.status in UNFINISHED_STATUSES]


def each(engine: Engine, message_ids: list[uuid.UUID], cancel_id: uuid.UUID) -> None:
    """Supersedes each message under its own lock. One whose lock another run holds has its call
    in flight: that run records the outcome, and the cancel waits for it (rule 5)."""
    for message_id in message_ids:
        with send_lock.exclusive(engine, message_id) as lock:
            if not lock:
                continue
            with unit_of_work(engine) as session:
                message = session.get_one(BroadcastProviderMessage, message_id)
                if message.status in UNFINISHED_STATUSES:  # it may have ended while this run took the lock
                    _record(session, message, cancel_id)


def _record(session: Session, message: BroadcastProviderMessage, cancel_id: uuid.UUID) -> Superseded | None:
    """The Superseded, or None when the message ended otherwise just before (a technical-failure
    recorded without the lock): then nothing is written."""
    superseded = Superseded(message.broadcast_event_id, message.provider, cancel_id, message.id,
                            message.message_number)
    row = dao.append_status(session, message, SUPERSEDED,
                            detail={"superseded_by": str(cancel_id), "reason": superseded.reason})
    return superseded if row is not None else None

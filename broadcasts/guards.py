"""The checks of docs/behaviour.md §4 that run before every attempt, as named pure rules over loaded rows.

Each rule either returns quietly or raises the `errors` type that says why the send cannot go
ahead now (retryable) or ever (not sendable). Time is always passed in.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime

from broadcasts.errors import (
    BroadcastCancelled,
    EarlierEventFailed,
    EarlierEventPending,
    EarlierEventRefused,
    EventExpired,
    InvalidBroadcast,
    MessageStubbed,
    ServiceNotLive,
)
from broadcasts.models import (
    RETURNED_ACK,
    SUPERSEDED,
    TECHNICAL_FAILURE,
    BroadcastEvent,
    BroadcastProviderMessage,
)
from broadcasts.retry import LONGEST_ALERT
from broadcasts.validation import areas_problems, content_problems


def ensure_service_may_broadcast(event: BroadcastEvent) -> None:
    """Rule 1: stubbed messages and inactive or trial services send nothing."""
    if event.broadcast_message.stubbed:
        raise MessageStubbed(event.id)
    if not event.service.active:
        raise ServiceNotLive(event.id, event.service_id, "inactive")
    if event.service.restricted:
        raise ServiceNotLive(event.id, event.service_id, "restricted (trial mode)")


def ensure_valid_broadcast(event: BroadcastEvent, now: datetime) -> None:
    """Rule 2: content and areas an alert or update carries must fit docs/behaviour.md §6 (a cancel carries
    neither), and every event needs a finish time no further away than the retry plan covers."""
    problems = []
    if event.message_type != "cancel":
        content = event.transmitted_content
        if content is not None and not isinstance(content, dict):
            problems.append(f"transmitted_content is {type(content).__name__}, not an object with a body")
        else:
            problems += content_problems((content or {}).get("body"))
        problems += areas_problems(event.transmitted_areas)
    finishes_at = event.finishes_at
    if finishes_at is None:
        problems.append("no finish time (neither transmitted_finishes_at nor the message's finishes_at)")
    elif finishes_at - now > LONGEST_ALERT:
        problems.append(
            f"it finishes at {finishes_at.isoformat()}, more than {LONGEST_ALERT.days} days away "
            f"(the longest alert retries can cover)"
        )
    if problems:
        raise InvalidBroadcast(event.id, problems)


def is_acknowledged(message: BroadcastProviderMessage | None) -> bool:
    """Rule 3: an acknowledged provider message is never sent again."""
    return message is not None and message.status == RETURNED_ACK


def ensure_not_expired(event: BroadcastEvent, now: datetime, attempted: bool) -> None:
    """Rule 4: past its finish time nothing is sent (equal to now is not expired). `attempted`:
    the proxy was already tried for it, so it expired while retrying."""
    finishes_at = event.finishes_at
    if finishes_at is not None and finishes_at < now:
        raise EventExpired(event.id, finishes_at, while_retrying=attempted)


def ensure_not_cancelled(event: BroadcastEvent, earlier: Sequence[BroadcastEvent]) -> None:
    """An alert or update written after its broadcast's cancel is refused; a cancel is always
    sendable (`earlier`: the events before it in the order of rule 5)."""
    if event.message_type == "cancel":
        return
    for earlier_event in earlier:
        if earlier_event.message_type == "cancel" and earlier_event.order_key < event.order_key:
            raise BroadcastCancelled(event.id, earlier_event.id)


def ensure_earlier_events_acknowledged(
    event: BroadcastEvent,
    provider: str,
    earlier: Sequence[tuple[BroadcastEvent, BroadcastProviderMessage | None]],
    now: datetime | None = None,
    refused: Mapping[uuid.UUID, str] | None = None,
) -> None:
    """Rule 5: every earlier event (before this one by `sent_at`, then creation, then id; oldest
    first) must be acknowledged by this provider. `refused`: the latest refusal reason of this
    provider for earlier events, by event id.

    A failed earlier event is final: it ended technical-failure or superseded (rule 6), or it was
    refused (a refusal and no provider message). It blocks an alert or update, and never holds a
    cancel: the cancel is sent, since a network may hold the earlier event from an attempt whose
    answer was lost. One still in progress (sending, returned-error, or no provider message and
    not refused) makes this send wait, a cancel's too (a cancel's attempt has first superseded
    every earlier alert and update it could, rule 6: what it still waits for has a call in
    flight). A failed event is checked before a pending one.
    """
    refused = refused or {}
    earlier = [(e, m) for e, m in earlier if e.order_key < event.order_key]  # later ones: ignored

    def failed(earlier_event: BroadcastEvent, message: BroadcastProviderMessage | None) -> bool:
        if message is None:
            return earlier_event.id in refused
        return message.status in (TECHNICAL_FAILURE, SUPERSEDED)

    if event.message_type != "cancel":
        for earlier_event, message in earlier:
            if not failed(earlier_event, message):
                continue
            finishes_at = earlier_event.finishes_at
            expired = now is not None and finishes_at is not None and finishes_at < now
            if message is None:
                raise EarlierEventRefused(event.id, provider, earlier_event.id, refused[earlier_event.id], expired)
            raise EarlierEventFailed(event.id, provider, earlier_event.id, earlier_expired=expired,
                                     ended=f"ended {message.status}")
    for earlier_event, message in earlier:
        if not is_acknowledged(message) and not failed(earlier_event, message):
            status = message.status if message is not None else "not yet sent"
            raise EarlierEventPending(event.id, provider, earlier_event.id, earlier_event.message_type, status)

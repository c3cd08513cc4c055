"""The checks of docs/behaviour.md §4 that run before every attempt, as named pure rules over loaded rows.

Each rule either returns quietly or raises the `errors` type that says why the send cannot go
ahead now (retryable) or ever (not sendable). Time is always passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from broadcasts.errors import (
    BroadcastCancelled,
    EarlierEventFailed,
    EarlierEventPending,
    EventExpired,
    InvalidBroadcast,
    MessageStubbed,
    ServiceNotLive,
)
from broadcasts.models import (
    RETURNED_ACK,
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
    sendable (`earlier`: events with a strictly earlier `sent_at`)."""
    if event.message_type == "cancel":
        return
    for earlier_event in earlier:
        if earlier_event.message_type == "cancel" and earlier_event.sent_at < event.sent_at:
            raise BroadcastCancelled(event.id, earlier_event.id)


def ensure_earlier_events_acknowledged(
    event: BroadcastEvent,
    provider: str,
    earlier: Sequence[tuple[BroadcastEvent, BroadcastProviderMessage | None]],
    now: datetime | None = None,
) -> None:
    """Rule 5: every earlier event (strictly earlier `sent_at`, oldest first) must be
    acknowledged by this provider. A failed one blocks; an unfinished one makes this send wait."""
    earlier = [(e, m) for e, m in earlier if e.sent_at < event.sent_at]  # later/same: ignored
    for earlier_event, message in earlier:
        if message is not None and message.status == TECHNICAL_FAILURE:
            finishes_at = earlier_event.finishes_at
            expired = now is not None and finishes_at is not None and finishes_at < now
            raise EarlierEventFailed(event.id, provider, earlier_event.id, earlier_expired=expired)
    for earlier_event, message in earlier:
        if not is_acknowledged(message):
            status = message.status if message is not None else "not yet sent"
            raise EarlierEventPending(event.id, provider, earlier_event.id, earlier_event.message_type, status)

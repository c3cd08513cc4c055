"""What a send writes besides the proxy call's outcome: a wait, a refusal, a failure, and the ends
of a message whose retries stopped (expiry, an operator's Cancel). Each is one history row on the
provider message (or, for a refusal, a row against the event and provider), so `status` and the
next send read the same truth."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from broadcasts import dao, send_lock
from broadcasts.db import unit_of_work
from broadcasts.errors import (
    DispatchError,
    EarlierEventPending,
    EventExpired,
    RunCancelled,
    SendRefused,
    UnexpectedError,
)
from broadcasts.models import RETURNED_ERROR, SENDING, TECHNICAL_FAILURE, BroadcastProviderMessage
from broadcasts.providers import Provider

logger = logging.getLogger(__name__)


def attempted(session: Session, message: BroadcastProviderMessage | None) -> bool:
    return message is not None and message.status in (SENDING, RETURNED_ERROR) and (
        dao.attempts_so_far(session, message.id) > 0
    )


def record_wait(
    session: Session, message: BroadcastProviderMessage, waiting: EarlierEventPending, now: datetime,
    long_wait_seconds: float,
) -> None:
    """One history row per earlier event waited for, not one per retry. Once the wait for it has
    lasted longer than `long_wait_seconds` (since its first row), one more row says it paged
    (`paged`), and `waiting.page_due` tells the orchestrator to page: once per earlier event."""
    waiting_for = str(waiting.earlier_event_id)
    history = dao.history(session, message.id)
    if not history or (history[-1].detail or {}).get("waiting_for") != waiting_for:
        row = dao.append_status(session, message, SENDING, detail={"waiting_for": waiting_for, "reason": waiting.reason})
        history += [row] if row is not None else []
    rows = [r for r in history if (r.detail or {}).get("waiting_for") == waiting_for]
    waited = (now - rows[0].created_at).total_seconds()
    if waited > long_wait_seconds and not any(r.detail.get("paged") for r in rows):
        waiting.page_due, waiting.waited_seconds = True, waited
        dao.append_status(session, message, SENDING, detail={
            "waiting_for": waiting_for, "reason": waiting.reason, "paged": True, "waited_seconds": round(waited)})


def record_refusal(session: Session, event_id: uuid.UUID, provider: Provider, error: SendRefused) -> None:
    """A refusal allocates no identifier: it is recorded against the event and provider. A send
    already under way (a provider message exists) also ends with the reason."""
    dao.record_refusal(session, event_id, provider.name, str(error))
    message = dao.get_provider_message(session, event_id, provider.name)
    if message is not None and message.status in (SENDING, RETURNED_ERROR):
        dao.append_status(session, message, TECHNICAL_FAILURE, detail={"error": str(error)})


def record_expired_while_retrying(engine: Engine, event_id: object, provider: str) -> None:
    """Ends an unfinished provider message whose retries stopped at expiry."""

    def expired(session: Session, message: BroadcastProviderMessage) -> DispatchError:
        event = dao.get_event(session, message.broadcast_event_id)
        assert event.finishes_at is not None
        return EventExpired(event.id, event.finishes_at, while_retrying=attempted(session, message))

    _end_unfinished(engine, event_id, provider, expired)


def record_run_cancelled(engine: Engine, event_id: uuid.UUID, provider: str, run_id: object) -> RunCancelled:
    """Ends an unfinished provider message whose run an operator cancelled, so that automatic
    resume leaves it, as every technical-failure, and only a replay sends it. Returns the error
    to raise."""
    error = RunCancelled(event_id, provider, run_id)
    _end_unfinished(engine, event_id, provider, lambda session, message: error)
    return error


def _end_unfinished(engine: Engine, event_id: object, provider: str,
                    reason: Callable[[Session, BroadcastProviderMessage], DispatchError]) -> None:
    """Ends the provider message `technical-failure` with `reason` if it is still `sending` or
    `returned-error`. Only a run that can take the message's lock records it: while another run's
    call is in flight, that run records the outcome of its own call."""
    with unit_of_work(engine) as session:
        message = dao.get_provider_message(session, event_id, provider)  # type: ignore[arg-type]
        if message is None or message.status not in (SENDING, RETURNED_ERROR):
            return
        message_id = message.id
    with send_lock.exclusive(engine, message_id) as held:
        if not held:
            return
        with unit_of_work(engine) as session:
            message = session.get_one(BroadcastProviderMessage, message_id)
            if message.status not in (SENDING, RETURNED_ERROR):
                return
            dao.append_status(session, message, TECHNICAL_FAILURE, detail={"error": str(reason(session, message))})


def record_failure(session: Session, event_id: uuid.UUID, provider: Provider, error: Exception) -> None:
    message = dao.get_or_create_provider_message(session, event_id, provider.name, provider.numbered)
    dao.append_status(session, message, TECHNICAL_FAILURE, detail={"error": str(error)})


def record_unexpected(engine: Engine, event_id: uuid.UUID, provider: Provider, error: Exception) -> UnexpectedError:
    """An error nobody expected must not leave the message `sending` with no history (every later
    event for this network would wait behind it until it expired): end it `technical-failure`
    with the error's type and message."""
    unexpected = UnexpectedError(event_id, provider.name, error)
    try:
        with unit_of_work(engine) as session:
            dao.get_event(session, event_id)
            record_failure(session, event_id, provider, unexpected)
    except Exception:
        logger.exception("could not record %s", unexpected)
    return unexpected

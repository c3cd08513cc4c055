"""One provider send, start to finish: the checks, the provider message, the proxy call, the record.

`send_once` is what the orchestrator runs for each (event, provider) on every attempt.
It is safe to run any number of times, concurrently, after a crash or after success:

- the provider message (the identifier the network sees) is created once and reused, and the
  payload it carries is fixed at the first attempt, so one identifier is always one message;
- once it is `returned-ack` nothing calls the proxy for it again; once it is `technical-failure`
  only an operator's replay (`Mode.replay_failed`) does; once a later cancel has superseded it
  (`supersede`) nothing does;
- a database lock (`send_lock`) stops two runs calling the proxy for it at the same time, and
  only the run holding that lock records what a call did (a lock lost during the call is said
  in the record, which still tells the truth about the identifier);
- every attempt ends with a record: the call's outcome, a wait (once per earlier event waited
  for), a refusal (against the event and provider, allocating no identifier) or an unexpected
  error (`technical-failure`, not retried): those records are in `dispatch_records`.

The event's plan (which networks, when retrying stops) is `event_plan`, read once before the
fan-out.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session

from broadcasts import dao, guards, route_advisor, send_lock, supersede
from broadcasts import dispatch_records as records
from broadcasts.cbc_proxy import CBCProxy, Delivered
from broadcasts.db import TRANSIENT_DATABASE_ERRORS, unit_of_work
from broadcasts.errors import (
    AllRoutesFailed,
    CancelAlreadySent,
    DatabaseUnavailable,
    DispatchError,
    EarlierEventFailed,
    EarlierEventPending,
    EndedTechnicalFailure,
    EventExpired,
    InvalidBroadcast,
    PayloadError,
    ProviderNotAvailable,
    RetryableError,
    SendInProgress,
    SendLockLost,
    SendRefused,
    Superseded,
)
from broadcasts.models import (
    RETURNED_ACK,
    RETURNED_ERROR,
    SENDING,
    SUPERSEDED,
    TECHNICAL_FAILURE,
    UNFINISHED_STATUSES,
    BroadcastEvent,
    BroadcastProviderMessage,
    utcnow,
)
from broadcasts.payloads import Reference, build_payload
from broadcasts.providers import Provider, get_provider
from broadcasts.retry import MAX_DELAY_SECONDS

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

# A provider slot yields None when it was taken, or a note saying why the send went without it.
ProviderSlot = Callable[[], AbstractContextManager[str | None]]


@dataclass(frozen=True)
class SendResult:
    provider: str
    status: str
    provider_message_id: uuid.UUID
    message_number: int | None
    route: str | None  # the route that acknowledged (`ee-1-proxy/cbc_a`), when this run sent it
    sent_now: bool  # False when it was already acknowledged before this run


@dataclass(frozen=True)
class Mode:
    """How a run sends. `replay_failed`: an operator's explicit replay, the only run that sends a
    `technical-failure` message again. `long_wait_seconds`: a wait for one earlier event longer
    than this (the longest retry interval) pages, once."""

    replay_failed: bool = False
    long_wait_seconds: float = MAX_DELAY_SECONDS


@dataclass(frozen=True)
class _Ready:
    event: BroadcastEvent  # loaded by the checks; events never change
    message_id: uuid.UUID
    payload: dict[str, Any]
    expires_at: datetime | None


@dataclass(frozen=True)
class _Superseding:
    """Rule 6 applies: recorded under the message's lock (`_supersede`), never from the checks."""

    event_id: uuid.UUID
    message_id: uuid.UUID


def _ack(message: BroadcastProviderMessage, route: str | None, sent_now: bool) -> SendResult:
    return SendResult(message.provider, RETURNED_ACK, message.id, message.message_number, route, sent_now)


def superseded_result(error: Superseded) -> SendResult:
    """What a superseded send ends with: final, and not a failure."""
    return SendResult(error.provider, SUPERSEDED, error.provider_message_id, error.message_number, None,
                      sent_now=False)


def _prepare(
    session: Session, event: BroadcastEvent, provider: Provider, headline: str, now: datetime, mode: Mode
) -> _Ready | _Superseding | SendResult:
    """Rules 2-6 of docs/behaviour.md §4, then the provider message and the payload fixed for it."""
    message = dao.get_provider_message(session, event.id, provider.name)
    _ensure_not_failed(session, event.id, provider.name, message, mode)  # before rule 2 records anything
    if message is not None and message.status == SUPERSEDED:  # final for every run: nothing recorded
        raise supersede.recorded(session, message)
    guards.ensure_valid_broadcast(event, now)
    if guards.is_acknowledged(message):
        assert message is not None
        return _ack(message, None, sent_now=False)
    guards.ensure_not_expired(event, now, attempted=records.attempted(session, message))
    earlier, later_cancels = dao.earlier_events_and_later_cancels(session, event)
    guards.ensure_not_cancelled(event, earlier)
    if event.message_type == "cancel":  # a cancel is never superseded (rule 6)
        later_cancels = []
    if supersede.first(later_cancels) is not None and (
            message is None or message.status in UNFINISHED_STATUSES):  # rule 6
        message = message or dao.create_provider_message(session, event.id, provider.name, provider.numbered)
        return _Superseding(event.id, message.id)
    _ensure_cancel_not_sent(session, later_cancels, event, provider.name)
    earlier_messages = {
        m.broadcast_event_id: m
        for m in (dao.provider_messages(session, [e.id for e in earlier], provider.name) if earlier else [])
    }
    pairs = [(e, earlier_messages.get(e.id)) for e in earlier]
    refused = dao.refusal_reasons(session, [e.id for e, m in pairs if m is None], provider.name)
    try:
        guards.ensure_earlier_events_acknowledged(event, provider.name, pairs, now, refused)
    except EarlierEventPending as waiting:
        # Create it now so the identifier (and Vodafone number) is fixed while it waits.
        message = message or dao.create_provider_message(session, event.id, provider.name, provider.numbered)
        records.record_wait(session, message, waiting, now, mode.long_wait_seconds)
        raise
    message = message or dao.create_provider_message(session, event.id, provider.name, provider.numbered)
    if message.payload is not None:
        payload = message.payload
    else:
        references = [Reference(m.id, e.sent_at, m.message_number) for e, m in pairs if m is not None]
        payload = dao.fix_payload(session, message, build_payload(
            provider,
            event,
            identifier=message.id,
            message_number=message.message_number,
            references=references,
            channel=dao.channel(event.service),
            headline=headline,
        ))
    return _Ready(event, message.id, payload, event.finishes_at)


def _ensure_cancel_not_sent(session: Session, later_cancels: list[BroadcastEvent], event: BroadcastEvent,
                            provider: str) -> None:
    """Rule 1, after the fact: an alert or update (a replay, say) is refused once a later cancel
    of its broadcast may have reached this provider: anything but a cancel that has only waited
    (for this event, or another earlier one) and was never attempted. A cancel goes ahead past a
    failed or refused event (rule 5), so without this a replay of that event would follow it.
    Checked after rule 6, which supersedes every send still under way: what is left here is an
    operator's replay of a `technical-failure` message."""
    for cancel in later_cancels:  # none for a cancel
        message = dao.get_provider_message(session, cancel.id, provider)
        if message is None:
            continue
        latest = dao.latest_history_row(session, message.id)
        only_waited = (message.status == SENDING and latest is not None
                       and (latest.detail or {}).get("waiting_for") is not None
                       and dao.attempts_so_far(session, message.id) == 0)
        if not only_waited:
            raise CancelAlreadySent(event.id, provider, cancel.id)


def _ensure_not_failed(
    session: Session, event_id: uuid.UUID, provider: str, message: BroadcastProviderMessage | None, mode: Mode
) -> None:
    """`technical-failure` is final for automatic runs: reported, nothing sent or recorded."""
    if message is not None and message.status == TECHNICAL_FAILURE and not mode.replay_failed:
        errors = [r.detail["error"] for r in dao.history(session, message.id) if r.detail and r.detail.get("error")]
        raise EndedTechnicalFailure(event_id, provider, errors[-1] if errors else None)


def send_once(
    engine: Engine,
    proxy: CBCProxy,
    event_id: uuid.UUID,
    provider_name: str,
    *,
    enabled: Sequence[str],
    headline: str,
    now: Callable[[], datetime] = utcnow,
    provider_slot: ProviderSlot = nullcontext,
    mode: Mode = Mode(),
    route_advice_seconds: float = 30.0,
) -> SendResult:
    """Send one event to one provider once, or raise why not (see `errors`).

    `enabled` is ENABLED_CBCS. `provider_slot` is entered only around the proxy call (the
    per-provider slot, a concurrency limit of 1), never while waiting for a retry. `mode` says
    whether this run is an operator's replay (the only run that sends a `technical-failure`
    message again) and when a wait pages. `route_advice_seconds` is how long the last route that
    worked is tried first (ROUTE_ADVICE_SECONDS). Every RetryableError raised names the event,
    the provider and when retrying must stop.
    """
    provider = get_provider(provider_name)
    try:
        try:
            return _send(engine, proxy, event_id, provider, enabled, headline, now, provider_slot, mode,
                         route_advice_seconds)
        except TRANSIENT_DATABASE_ERRORS as error:
            raise DatabaseUnavailable(type(error).__name__) from error
        except DispatchError:
            raise
        except Exception as error:
            raise records.record_unexpected(engine, event_id, provider, error) from error
    except RetryableError as error:
        error.event_id, error.provider = event_id, provider_name
        raise


def _send(
    engine: Engine,
    proxy: CBCProxy,
    event_id: uuid.UUID,
    provider: Provider,
    enabled: Sequence[str],
    headline: str,
    now: Callable[[], datetime],
    provider_slot: ProviderSlot,
    mode: Mode,
    route_advice_seconds: float,
) -> SendResult:
    with unit_of_work(engine) as session:
        event = dao.get_event(session, event_id)
        if event.message_type != "cancel":
            ready = _check(session, event, provider, enabled, headline, now(), mode)
    if event.message_type == "cancel":
        # A cancel's part of rule 6 takes other messages' locks: outside the checks' transaction.
        _supersede_earlier(engine, event_id, provider, enabled, now())
        with unit_of_work(engine) as session:
            event = dao.get_event(session, event_id)
            ready = _check(session, event, provider, enabled, headline, now(), mode)
    expires_at = event.finishes_at
    try:
        # Raised after the transaction above commits, so what was recorded stays recorded.
        if isinstance(ready, Exception):
            raise ready
        if isinstance(ready, SendResult):
            return ready
        if isinstance(ready, _Superseding):
            return _supersede(engine, provider, ready)
        return _attempt(engine, proxy, provider, ready, provider_slot, now, mode, route_advice_seconds)
    except RetryableError as error:
        error.expires_at = expires_at  # retrying must stop when the event expires
        raise


def _check(session: Session, event: BroadcastEvent, provider: Provider, enabled: Sequence[str], headline: str,
           now: datetime, mode: Mode) -> _Ready | _Superseding | SendResult | Exception:
    """Rules 1-6 for this attempt, what they record, and what to do: send, supersede, report an
    earlier acknowledgement, or the error to raise once the transaction has committed."""
    try:
        _ensure_may_send(event, provider.name, enabled)  # rule 1
        return _prepare(session, event, provider, headline, now, mode)
    except SendRefused as error:
        records.record_refusal(session, event.id, provider, error)
        return error
    except (InvalidBroadcast, EventExpired, EarlierEventFailed, PayloadError) as error:
        records.record_failure(session, event.id, provider, error)
        return error
    except (RetryableError, EndedTechnicalFailure, Superseded) as error:  # the last two record nothing
        return error


def _supersede_earlier(engine: Engine, event_id: uuid.UUID, provider: Provider, enabled: Sequence[str],
                       now: datetime) -> None:
    """A cancel's part of rule 6, before its checks and outside their transaction, since it takes
    other messages' locks. A cancel that rules 1, 2 or 4 stop (refused, invalid, expired)
    supersedes nothing and allocates nothing: the checks then stop it and record why."""
    with unit_of_work(engine) as session:
        event = dao.get_event(session, event_id)
        try:
            _ensure_may_send(event, provider.name, enabled)
            guards.ensure_valid_broadcast(event, now)
            guards.ensure_not_expired(event, now, attempted=False)
        except (SendRefused, InvalidBroadcast, EventExpired):
            return
        message_ids = supersede.earlier_for_cancel(session, event, provider)
    supersede.each(engine, message_ids, event_id)


def _ensure_may_send(event: BroadcastEvent, provider: str, enabled: Sequence[str]) -> None:
    """Rule 1, plus: only the service's available providers (its list ∩ ENABLED_CBCS)."""
    guards.ensure_service_may_broadcast(event)
    available = dao.service_providers(event.service, enabled)
    if provider not in available:
        raise ProviderNotAvailable(event.id, provider, available)


def _supersede(engine: Engine, provider: Provider, target: _Superseding) -> SendResult:
    """Rule 6, decided under the message's lock: a call another run has in flight is recorded by
    that run (an acknowledgement stays), and this run tries again later."""
    with send_lock.exclusive(engine, target.message_id) as lock:
        if not lock:
            raise SendInProgress(target.event_id, provider.name)
        with unit_of_work(engine) as session:
            message = session.get_one(BroadcastProviderMessage, target.message_id)
            if guards.is_acknowledged(message):  # that call was acknowledged: nothing to supersede
                return _ack(message, None, sent_now=False)
            _ensure_not_failed(session, target.event_id, provider.name, message, Mode())  # ended meanwhile
            superseded = supersede.under_lock(session, dao.get_event(session, target.event_id), message)
    if superseded is None:  # it ended otherwise meanwhile: the next attempt finds how
        raise SendInProgress(target.event_id, provider.name)
    raise superseded


def _attempt(
    engine: Engine,
    proxy: CBCProxy,
    provider: Provider,
    ready: _Ready,
    provider_slot: ProviderSlot,
    now: Callable[[], datetime],
    mode: Mode,
    route_advice_seconds: float,
) -> SendResult:
    # The slot first, then the lock: of the sends waiting for a network, only one per process holds
    # a database connection (the slot's), so however many runs wait, at most two connections per
    # network and process are held through a call. The
    # outcome is recorded before the slot is given back: the next send to this network (often the
    # next event of the same broadcast) then finds this one acknowledged.
    with provider_slot() as slot_note:
        with send_lock.exclusive(engine, ready.message_id) as lock:
            if not lock:
                raise SendInProgress(ready.event.id, provider.name)
            try:
                # On the lock's own connection: a PostgreSQL lock goes only with its connection, so a
                # transaction that commits there proves the lock still held just before the call.
                with lock.transaction(engine) as session:
                    message = session.get_one(BroadcastProviderMessage, ready.message_id)
                    if guards.is_acknowledged(message):  # another run finished while we prepared
                        return _ack(message, None, sent_now=False)
                    # Another run may have ended it technical-failure since this one prepared.
                    _ensure_not_failed(session, ready.event.id, provider.name, message, mode)
                    # A cancel written since this run prepared: the call must not start (rule 6).
                    superseded = supersede.under_lock(session, ready.event, message)
                    attempt = dao.attempts_so_far(session, message.id) + 1
                    if message.status == TECHNICAL_FAILURE:  # an operator's replay
                        dao.append_status(session, message, SENDING, detail={"reason": "replayed"})
                    routes = route_advisor.ordered_routes(session, provider.name, proxy.routes(provider), now(),
                                                          route_advice_seconds)
            except SQLAlchemyError:
                if lock.lost:  # its connection dropped: another run may take the lock now
                    raise SendLockLost(ready.event.id, provider.name) from None
                raise
            if superseded is not None:
                raise superseded
            outcome: Delivered | AllRoutesFailed | None = None  # None: expired before the call
            if not _has_expired(ready, now()):  # waiting for the slot can take a while
                try:
                    outcome = proxy.send(routes, ready.payload, deadline=ready.expires_at)
                except AllRoutesFailed as error:
                    outcome = error
            extra = {"slot_stuck": slot_note} if slot_note else {}
            try:
                # The lock is found lost when its connection fails to take the record.
                result = _recorded(engine, lock, lambda session: _record_outcome(
                    session, provider, ready, message, outcome, attempt,
                    {**extra, **({"lock_lost": LOCK_LOST} if lock.lost else {})}, now))
            finally:
                if lock.lost:
                    logger.error("event %s to %s: %s", ready.event.id, provider.name, LOCK_LOST)
    if isinstance(result, DispatchError):
        raise result
    return result


def _record_outcome(
    session: Session,
    provider: Provider,
    ready: _Ready,
    message: BroadcastProviderMessage,
    outcome: Delivered | AllRoutesFailed | None,
    attempt: int,
    extra: dict[str, Any],
    now: Callable[[], datetime],
) -> SendResult | DispatchError:
    """Step 5's record of what the call did (`outcome`), or of the event expiring before it; returns
    the result, or the error the attempt ends with."""
    # As read under the lock before the call, not read again: its status is only ever changed by
    # an UPDATE that checks it (dao.append_status).
    message = session.merge(message, load=False)
    if isinstance(outcome, Delivered):
        failures = [f.as_dict() for f in outcome.failures]
        detail = {**extra, **({"failed_routes": failures} if failures else {})}
        dao.append_status(session, message, RETURNED_ACK, route=outcome.answered_by, attempt=attempt,
                          detail=detail or None)
        route_advisor.record_success(session, provider.name, outcome.route, now())
        return _ack(message, outcome.answered_by, sent_now=True)
    detail: dict[str, Any] = dict(extra)
    if outcome is not None:
        detail |= {"error": str(outcome), "failed_routes": outcome.failures}
    if not _has_expired(ready, now()):
        assert outcome is not None  # no call only when expired
        dao.append_status(session, message, RETURNED_ERROR, attempt=attempt, detail=detail)
        return outcome
    assert ready.expires_at is not None
    error = EventExpired(message.broadcast_event_id, ready.expires_at, while_retrying=True)
    detail["error"] = f"{error}; last attempt: {outcome}" if outcome else str(error)
    dao.append_status(session, message, TECHNICAL_FAILURE, attempt=attempt if outcome else None, detail=detail)
    return error


# The waits between tries to write a call's outcome when the database fails transiently (each try
# bounded by the database's own timeouts). The lock is held meanwhile, so no other run calls the
# proxy for this identifier.
RECORD_RETRY_WAITS = (0.2, 0.5, 1.0, 2.0, 4.0)


def _recorded(engine: Engine, lock: send_lock.Lock, write: Callable[[Session], _T]) -> _T:
    """`write` once the proxy has answered, which must not be lost: unrecorded, an acknowledged
    message looks unsent and the next attempt sends it again. On the lock's own connection first,
    which needs no new one (a database out of connections cannot refuse it); a transient error is
    tried again for a few seconds, on a pooled connection once the lock's has failed (the lock
    then lost: the record says so)."""
    for wait in RECORD_RETRY_WAITS:
        try:
            with lock.transaction(engine) as session:
                return write(session)
        except SQLAlchemyError as error:
            # A lost connection is not always an OperationalError (psycopg2 reports some, an SSL
            # EOF say, as a plain DatabaseError): transient here too.
            lost_connection = isinstance(error, DBAPIError) and error.connection_invalidated
            if not (isinstance(error, TRANSIENT_DATABASE_ERRORS) or lost_connection):
                raise
            logger.warning("could not record a proxy call's outcome (%s: %s); trying again in %s s",
                           type(error).__name__, error, wait)
            time.sleep(wait)
    with lock.transaction(engine) as session:  # the last try: its error ends the attempt, retried
        return write(session)


# Recorded all the same: the outcome is the truth about our identifier, and the network de-duplicates.
LOCK_LOST = ("the per-message lock was lost during the proxy call (its database connection ended), so "
             "another run may have called the proxy for this identifier at the same time")


def _has_expired(ready: _Ready, now: datetime) -> bool:
    return ready.expires_at is not None and ready.expires_at < now



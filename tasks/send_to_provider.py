"""The provider-send task: one (event, provider), retried on docs/behaviour.md §4's schedule until it is
acknowledged, cannot be sent, or the event expires. The retry policy lives here and only here."""

from __future__ import annotations

import copy
import logging
import uuid
from datetime import datetime
from collections.abc import Hashable
from typing import Any, SupportsIndex

from prefect import Task, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.events import emit_event

from broadcasts import dispatch, dispatch_records, retry
from broadcasts.cbc_proxy import CBCProxy, get_proxy
from broadcasts.db import get_engine
from broadcasts.errors import EarlierEventFailed, EarlierEventPending, NotSendable, RetryableError, Superseded
from broadcasts.models import utcnow
from broadcasts.settings import get_settings
from tasks.provider_limits import slot_for, slot_wait_seconds
from tasks.retry_clock import RetryClock
from tasks.run_cancel import stopped_if_run_cancelled

logger = logging.getLogger(__name__)
_clock = RetryClock()
# Emitted when a send is blocked behind an earlier event's technical-failure (an operator alert).
PROVIDER_BLOCKED_EVENT = "broadcast.provider.blocked"
# Emitted once per earlier event when a send has waited for it past the longest retry interval.
PROVIDER_WAITING_EVENT = "broadcast.provider.waiting"


def should_retry(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only retryable failures, and only while the event has not expired. When expiry
    stops the retries, the provider message ends `technical-failure` ("expired while
    retrying") here, the one place that decision is taken; if that record cannot be written,
    retry once more so the next attempt writes it."""
    error = state.data
    if not isinstance(error, RetryableError):
        return False
    if error.expires_at is None or utcnow() <= error.expires_at:
        return True
    if error.provider is not None:
        try:
            dispatch_records.record_expired_while_retrying(
                get_engine(get_settings().database_url), error.event_id, error.provider
            )
        except Exception:
            logger.warning("could not record that event %s expired while retrying for %s; trying "
                           "once more so the next attempt records it", error.event_id, error.provider,
                           exc_info=True)
            return True
    return False


class DelaysCutAtExpiry(list[float]):
    """The schedule as Prefect reads it: the engine indexes `retry_delay_seconds` at the moment a
    retry is due, so each wait is computed then, cut to land just after the finish time, and
    otherwise timed so the next call comes on plan (tasks/retry_clock.py)."""

    def __init__(self, finishes_at: datetime | None, scale: float) -> None:
        super().__init__(retry.scaled_delays(scale))
        self.finishes_at, self.scale = finishes_at, scale

    def __getitem__(self, index: SupportsIndex | slice) -> Any:
        if isinstance(index, slice):
            return super().__getitem__(index)
        seconds_left = None if self.finishes_at is None else (self.finishes_at - utcnow()).total_seconds()
        delay = retry.delay_before(int(index), seconds_left, self.scale)
        if delay < retry.retry_delay(int(index)) * self.scale:  # cut to land just after expiry: kept as cut
            return delay
        return _clock.wait(_this_run(), delay)


@task(
    name="send-to-provider",
    task_run_name="send {provider} event {broadcast_event_id}",
    retries=retry.MAX_RETRIES + retry.SPARE_RETRIES,
    retry_delay_seconds=retry.RETRY_DELAYS,
    retry_condition_fn=should_retry,
    cache_policy=NO_CACHE,  # every attempt runs: only the database says what was sent (and no key to hash)
)
def send_to_provider(broadcast_event_id: str, provider: str, replay_failed: bool = False) -> dispatch.SendResult:
    """`replay_failed`: an operator's replay, which alone sends a technical-failure message again.
    Returns the result, acknowledged or superseded (docs/behaviour.md §4 rule 6); raises otherwise."""
    logger = get_run_logger()
    settings = get_settings()
    slot_timeout = slot_wait_seconds(settings)
    long_wait = retry.MAX_DELAY_SECONDS * settings.broadcast_retry_delay_scale
    engine = get_engine(settings.database_url)
    try:
        with stopped_if_run_cancelled(engine, broadcast_event_id, provider):  # an operator's Cancel
            result = dispatch.send_once(
                engine,
                _Timed(get_proxy(settings), _this_run()),  # type: ignore[arg-type]  # the proxy's send, timed
                uuid.UUID(broadcast_event_id),
                provider,
                headline=settings.broadcast_headline,
                enabled=settings.enabled_cbcs,
                provider_slot=lambda: slot_for(settings, provider, slot_timeout),
                mode=dispatch.Mode(replay_failed=replay_failed, long_wait_seconds=long_wait),
                route_advice_seconds=settings.route_advice_seconds,
            )
    except RetryableError as error:
        _clock.failed(_this_run(), at=error.answered_at)  # the planned wait starts there
        logger.warning("%s: %s", type(error).__name__, error)
        if isinstance(error, EarlierEventPending) and error.page_due:  # once per earlier event
            logger.error("%s", error.long_wait())
            _announce(PROVIDER_WAITING_EVENT, broadcast_event_id, provider,
                      earlier_event_id=str(error.earlier_event_id), waited_seconds=round(error.waited_seconds),
                      message=error.long_wait())
        raise
    except Superseded as error:  # final, and not a failure: the task completes, and nothing pages
        logger.warning("%s", error)
        return dispatch.superseded_result(error)
    except NotSendable as error:
        logger.error("%s: %s", type(error).__name__, error)
        if isinstance(error, EarlierEventFailed):
            _announce(PROVIDER_BLOCKED_EVENT, broadcast_event_id, provider,
                      earlier_event_id=str(error.earlier_event_id), message=str(error))
        raise
    logger.info(
        "%s acknowledged event %s as %s%s",
        provider, broadcast_event_id, result.provider_message_id,
        f" via {result.route}" if result.sent_now else " (already acknowledged; not sent again)",
    )
    return result


def _this_run() -> Hashable:
    context = TaskRunContext.get()
    return None if context is None else context.task_run.id


class _Timed:
    """The proxy, noting when an attempt calls it: what a retry's start-up took."""

    def __init__(self, proxy: CBCProxy, run: Hashable) -> None:
        self._proxy, self._run = proxy, run

    def send(self, *args: Any, **kwargs: Any) -> Any:
        _clock.calling(self._run)
        return self._proxy.send(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._proxy, name)


def _announce(name: str, event_id: str, provider: str, **payload: Any) -> None:
    try:
        emit_event(
            event=name,
            resource={"prefect.resource.id": f"broadcasts.event.{event_id}", "prefect.resource.name": event_id},
            related=[{"prefect.resource.id": f"broadcasts.provider.{provider}", "prefect.resource.role": "provider",
                      "prefect.resource.name": provider}],
            payload={"event_id": event_id, "provider": provider, **payload},
        )
    except Exception:  # the record in the database matters more than the page
        logger.warning("could not emit %s", name, exc_info=True)


def planned_for(finishes_at: datetime | None, scale: float) -> Task[Any, dispatch.SendResult]:
    """The task with this run's retry plan: as many retries as reach the event's finish time, the
    last wait cut to land just after it (`scale` < 1 only in tests and the demo)."""
    seconds_left = None if finishes_at is None else (finishes_at - utcnow()).total_seconds()
    # A copy with two settings changed, not `with_options`: that builds a new Task, which reads and
    # tokenizes the function's source again (about 2 ms on the run's thread, before the fan-out).
    planned = copy.copy(send_to_provider)
    planned.retries = retry.planned_retries(seconds_left, scale)
    planned.retry_delay_seconds = DelaysCutAtExpiry(finishes_at, scale)
    return planned

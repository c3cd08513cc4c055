"""The provider-send task: one (event, provider), retried on SPEC §4's schedule until it is
acknowledged, cannot be sent, or the event expires. The retry policy lives here and only here."""

from __future__ import annotations

import uuid
from typing import Any

from prefect import get_run_logger, task

from broadcasts import dispatch, retry
from broadcasts.cbc_proxy import get_proxy
from broadcasts.db import get_engine
from broadcasts.errors import NotSendable, RetryableError
from broadcasts.models import utcnow
from broadcasts.settings import get_settings
from tasks.provider_limits import ensure_limits, provider_slot


def should_retry(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only retryable failures, and only while the event has not expired. When expiry
    stops the retries, the provider message ends `technical-failure` ("expired while
    retrying") here, the one place that decision is taken."""
    error = state.data
    if not isinstance(error, RetryableError):
        return False
    if error.expires_at is None or utcnow() <= error.expires_at:
        return True
    if error.provider is not None:
        dispatch.record_expired_while_retrying(
            get_engine(get_settings().database_url), error.event_id, error.provider
        )
    return False


@task(
    name="send-to-provider",
    task_run_name="send {provider} event {broadcast_event_id}",
    retries=retry.MAX_RETRIES,
    retry_delay_seconds=retry.RETRY_DELAYS,
    retry_condition_fn=should_retry,
)
def send_to_provider(broadcast_event_id: str, provider: str) -> dispatch.SendResult:
    logger = get_run_logger()
    settings = get_settings()
    # Long enough for another send to this provider to try both routes and time out on each.
    slot_timeout = 2 * (settings.cbc_proxy_connect_timeout + settings.cbc_proxy_read_timeout) + 10
    try:
        ensure_limits([provider])
        result = dispatch.send_to_provider(
            get_engine(settings.database_url),
            get_proxy(settings),
            uuid.UUID(broadcast_event_id),
            provider,
            headline=settings.broadcast_headline,
            enabled=settings.enabled_cbcs,
            provider_slot=lambda: provider_slot(provider, slot_timeout),
        )
    except RetryableError as error:
        logger.warning("%s: %s", type(error).__name__, error)
        raise
    except NotSendable as error:
        logger.error("%s: %s", type(error).__name__, error)
        raise
    logger.info(
        "%s acknowledged event %s as %s%s",
        provider, broadcast_event_id, result.provider_message_id,
        f" via {result.route}" if result.sent_now else " (already acknowledged; not sent again)",
    )
    return result


def with_schedule(scale: float):  # type: ignore[no-untyped-def]
    """The task with its delays multiplied by BROADCAST_RETRY_DELAY_SCALE (tests and demo only)."""
    if scale == 1:
        return send_to_provider
    return send_to_provider.with_options(retry_delay_seconds=retry.scaled_delays(scale))

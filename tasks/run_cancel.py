"""A Cancel in the Prefect UI stops a provider send at its next retry.

Prefect cancels a run by killing its process. The warm dispatcher runs each run in a thread of its
own process, which cannot be killed, and Prefect 3.9 marks a run Cancelled after 300 s in
Cancelling whatever the thread still does: resume-dispatch then saw no live run and started a
second one while the first kept sending. So the provider-send task reads its own flow run's
state (one short API call, tasks/run_state.py) before each retry attempt, and after a failed
attempt (in a thread of its own, while the retry waits), and stops when the run is Cancelling or Cancelled: a Cancel takes effect within one
retry wait or one attempt, whichever is longer. A first attempt does not ask: the engine does not
start a run cancelled before it starts, and asking would cost every alert a round trip.

Stopping ends the provider message `technical-failure` with the reason
(`dispatch_records.record_run_cancelled`), so resume-dispatch does not send it again behind the
operator's back; `broadcasts replay` does.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

from prefect.client.schemas.objects import StateType
from prefect.context import TaskRunContext
from sqlalchemy import Engine

from broadcasts import dispatch_records
from broadcasts.errors import RetryableError, RunCancelled
from tasks import run_state

logger = logging.getLogger(__name__)
CANCELLED = (StateType.CANCELLING, StateType.CANCELLED)


@contextmanager
def stopped_if_run_cancelled(engine: Engine, event_id: str, provider: str) -> Iterator[None]:
    """Around one attempt of the provider-send task: raises RunCancelled (never retried), after
    recording it, when this task's flow run has been cancelled; asked before a retry attempt. When
    the attempt raised a RetryableError it is also asked at once, in a thread of its own while
    the retry waits (asked inline, the read lengthened every retry wait by its round trip): a
    cancel found then is recorded, and the retry stops on it."""
    context = TaskRunContext.get()
    if context is not None and context.task_run.run_count > 1:
        _stop_if_cancelled(context, engine, event_id, provider)
    try:
        yield
    except RetryableError:
        if context is not None:
            threading.Thread(target=contextvars.copy_context().run,
                             args=(_record_if_cancelled, context, engine, event_id, provider),
                             name=f"cancel check {provider}", daemon=True).start()
        raise


def _record_if_cancelled(context: TaskRunContext, engine: Engine, event_id: str, provider: str) -> None:
    try:
        _stop_if_cancelled(context, engine, event_id, provider)
    except RunCancelled:  # recorded: the retry ends on the technical-failure
        pass


def _stop_if_cancelled(context: TaskRunContext, engine: Engine, event_id: str, provider: str) -> None:
    """A state that cannot be read counts as not cancelled: an API blip must not stop an alert."""
    run_id: UUID | None = context.task_run.flow_run_id
    if run_id is None:
        return  # a task called outside a flow run: nothing can cancel it
    state = run_state.current_api().run_state(run_id)  # one short call, never raising
    if isinstance(state, run_state.Unanswered):
        logger.warning("could not read the state of flow run %s (%s); carrying on", run_id, state.reason)
        return
    if state not in CANCELLED:
        return
    try:
        stopped = dispatch_records.record_run_cancelled(engine, UUID(event_id), provider, run_id)
    except Exception:  # the run stops all the same; resume-dispatch may then send it again
        logger.warning("could not record that run %s was cancelled for event %s to %s", run_id, event_id,
                       provider, exc_info=True)
        stopped = RunCancelled(event_id, provider, run_id)
    raise stopped

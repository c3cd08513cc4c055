"""An event's plan: the networks it goes to and when retrying must stop, read before the fan-out."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from broadcasts import dao
from broadcasts.db import TRANSIENT_DATABASE_ERRORS, unit_of_work
from broadcasts.errors import DatabaseUnavailable


@dataclass(frozen=True)
class EventPlan:
    """What the fan-out needs: the providers (service list ∩ enabled, in enabled order) and when
    retrying must stop (None: the event has no finish time, which its first attempt refuses)."""

    providers: list[str]
    finishes_at: datetime | None


def plan_event(session: Session, event_id: uuid.UUID, enabled: Sequence[str]) -> EventPlan:
    """The providers an event goes to (its service's list ∩ the enabled list, in enabled order)
    and its finish time."""
    event = dao.get_event(session, event_id)
    return EventPlan(dao.service_providers(event.service, enabled), event.finishes_at)


def read_plan(engine: Engine, event_id: uuid.UUID, enabled: Sequence[str]) -> EventPlan:
    """`plan_event` in its own transaction; a lost connection is a retryable DatabaseUnavailable."""
    try:
        with unit_of_work(engine) as session:
            return plan_event(session, event_id, enabled)
    except TRANSIENT_DATABASE_ERRORS as error:
        raise DatabaseUnavailable(f"{type(error).__name__} reading event {event_id}") from error

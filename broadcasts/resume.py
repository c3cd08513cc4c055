"""Which events still need dispatching, decided from the database alone (docs/behaviour.md §7).

A lost webhook call or a process that died between retries must not lose an alert. The database
is the record of what was sent, so it alone says what is unfinished; the orchestrator only adds
whether a run is still working on it. `events_to_dispatch` lists every event that needs a send:

- it has not expired: its finish time (its own `transmitted_finishes_at`, else its message's
  `finishes_at`) is after now, so a send could still reach a network. Only unexpired events are
  read, however many expired ones the table holds;
- it was written at least the grace period ago, so its own trigger (the webhook, the
  `broadcast.event.created` event) has had time to start a run first;
- some network would take it: the message is not stubbed and the service is active and not in
  trial mode (every network refuses those, rule 1 of §4), and one of the service's available
  providers (its list ∩ ENABLED_CBCS) is unfinished:
- that provider has a provider message left `sending` or `returned-error` (a run was under way,
  a replay after a refusal too), or none and no refusal. `returned-ack` and `superseded` (a
  later cancel stopped it) are done for ever; `technical-failure` and a refusal wait for an
  operator, and never make a later event wait (rule 5 of §4), so the same test says what a
  later event waits for.

Dispatching an event again is always safe, so a wrong "yes" costs only a run: the send re-checks
every rule, reuses each provider's identifier and payload, and never re-sends what a network
acknowledged (`dispatch`). A wrong "no" would lose an alert, so an event counts as unfinished as
soon as one available provider is.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from broadcasts import dao
from broadcasts.models import UNFINISHED_STATUSES

NO_MESSAGE = "no provider message"


@dataclass(frozen=True)
class Unfinished:
    """An event to dispatch, and why: each unfinished provider with its status (None: no provider
    message yet), and whether any provider has a provider message or a refusal at all."""

    event_id: uuid.UUID
    sent_at: datetime
    providers: tuple[tuple[str, str | None], ...]
    dispatched_before: bool

    @property
    def reason(self) -> str:
        """"never dispatched: no provider message", or e.g. "ee, o2 not acknowledged (ee
        returned-error, o2 sending)" (providers in enabled order)."""
        if not self.dispatched_before:
            return f"never dispatched: {NO_MESSAGE}"
        names = ", ".join(provider for provider, _ in self.providers)
        states = ", ".join(f"{provider} {status or NO_MESSAGE}" for provider, status in self.providers)
        return f"{names} not acknowledged ({states})"


def events_to_dispatch(
    session: Session, now: datetime, grace: timedelta, enabled: Sequence[str]
) -> list[Unfinished]:
    """Every event that needs a send at `now` (see the module docstring), oldest first. `enabled`
    is ENABLED_CBCS. Three queries, plus one per service with an unexpired event."""
    events = dao.unexpired_events_written_by(session, now, now - grace)
    if not events:
        return []
    event_ids = [event.id for event in events]
    statuses = {(m.broadcast_event_id, m.provider): m.status for m in dao.provider_messages(session, event_ids)}
    refused = dao.refused_providers(session, event_ids)
    dispatched = {event_id for event_id, _ in (*statuses, *refused)}
    available: dict[uuid.UUID, list[str]] = {}
    found = []
    for event in events:
        if event.service_id not in available:
            available[event.service_id] = dao.available_providers(session, event.service_id, enabled)
        unfinished = tuple(
            (provider, status)
            for provider in available[event.service_id]
            if (status := statuses.get((event.id, provider))) in UNFINISHED_STATUSES
            or (status is None and (event.id, provider) not in refused)
        )
        if unfinished:
            found.append(Unfinished(event.id, event.sent_at, unfinished, event.id in dispatched))
    return found

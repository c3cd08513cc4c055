"""Helpers for the end-to-end tests: run the real flows against the test Prefect server, the test
database and the simulator, and read back what the database and the simulator recorded."""

from __future__ import annotations

import contextvars
import threading
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select

from broadcasts.db import unit_of_work
from broadcasts.models import BroadcastEvent, BroadcastProviderMessage
from broadcasts.payloads import cap_time
from broadcasts.status import ProviderStatus, event_status
from flows.send_broadcast_event import send_broadcast_event
from flows.send_provider_message import send_provider_message


def in_thread(target: Callable[[], Any]) -> threading.Thread:
    """A started thread running `target` in a copy of this context, which carries the test
    Prefect server's API URL (a bare thread would fall back to a temporary server)."""
    thread = threading.Thread(target=contextvars.copy_context().run, args=(target,))
    thread.start()
    return thread


def run_event(event_id: uuid.UUID) -> Any:
    return send_broadcast_event(str(event_id), return_state=True)


def run_replay(event_id: uuid.UUID, provider: str) -> Any:
    return send_provider_message(str(event_id), provider, return_state=True)


def statuses(engine: Engine, event_id: uuid.UUID) -> dict[str, ProviderStatus]:
    with unit_of_work(engine) as session:
        return {s.provider: s for s in event_status(session, event_id)}


def provider_message_count(engine: Engine, event_id: uuid.UUID) -> int:
    with unit_of_work(engine) as session:
        return session.scalar(
            select(func.count()).select_from(BroadcastProviderMessage)
            .where(BroadcastProviderMessage.broadcast_event_id == event_id)
        )


def sent_at(engine: Engine, event_id: uuid.UUID) -> datetime:
    with unit_of_work(engine) as session:
        return session.get_one(BroadcastEvent, event_id).sent_at


def finishes_at(engine: Engine, event_id: uuid.UUID) -> datetime:
    with unit_of_work(engine) as session:
        return session.get_one(BroadcastEvent, event_id).transmitted_finishes_at


def calls_for(sim: Any, identifier: uuid.UUID | str) -> list[dict[str, Any]]:
    return [c for c in sim.invocations() if isinstance(c["payload"], dict)
            and c["payload"].get("identifier") == str(identifier)]


def reference(engine: Engine, event_id: uuid.UUID, provider: str) -> dict[str, str]:
    """What an update or cancel must send to point at `event_id`'s message for `provider`."""
    status = statuses(engine, event_id)[provider]
    ref = {"message_id": str(status.identifier), "sent": cap_time(sent_at(engine, event_id))}
    if status.message_number:
        ref["message_number"] = status.message_number
    return ref




def prefect_events(name: str, since: datetime) -> list[dict[str, Any]]:
    """The Prefect events called `name` that the test server received since `since`."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        response = client.request("POST", "/events/filter", json={
            "filter": {"event": {"name": [name]}, "occurred": {"since": since.isoformat()}},
        })
    return response.json()["events"]

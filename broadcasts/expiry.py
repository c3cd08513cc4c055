"""Auto-expiry: a broadcast past its finish time is `completed` (docs/behaviour.md §2 and §7).

Why this sends nothing and completes each message once:

- Every alert and update carried its finish time to the networks (`expires`, §3), so each
  network stops broadcasting at that time on its own: completing the message records what has
  already happened, and calls no proxy. Provider messages and their history are left as they are.
- Only a `broadcasting` message whose `finishes_at` is before now changes. A message with no
  `finishes_at`, or in any other status (draft, cancelled, technical-failure …), is never touched.
- The change is one conditional UPDATE (`status = 'broadcasting' AND finishes_at < now`), and a
  history row is written for each row that UPDATE changed, in the same transaction. A copy
  running at the same time finds those rows no longer `broadcasting` (or, on PostgreSQL, locked
  and skipped), so however many copies run, each message is completed once, with one history row.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from broadcasts import dao
from broadcasts.db import unit_of_work
from broadcasts.models import COMPLETED


@dataclass(frozen=True)
class Expired:
    """A broadcast message this run completed."""

    broadcast_message_id: uuid.UUID
    service_id: uuid.UUID
    finishes_at: datetime
    completed_at: datetime

    @property
    def reason(self) -> str:
        return expired_reason(self.finishes_at)

    def as_row(self) -> dict[str, Any]:
        return {
            "broadcast_message_id": str(self.broadcast_message_id),
            "service_id": str(self.service_id),
            "finishes_at": self.finishes_at.isoformat(),
            "completed_at": self.completed_at.isoformat(),
        }


def expired_reason(finishes_at: datetime) -> str:
    return f"expired: finishes_at {finishes_at.isoformat(timespec='milliseconds')} passed"


def expire_finished_broadcasts(engine: Engine, now: datetime) -> list[Expired]:
    """Completes every `broadcasting` message whose `finishes_at` is before `now`, with a history
    row each, in one transaction; returns those this call completed, oldest finish first."""
    with unit_of_work(engine) as session:
        expired = []
        for message in dao.complete_finished_messages(session, now):
            assert message.finishes_at is not None  # the UPDATE matched `finishes_at < now`
            dao.append_message_history(session, message.id, COMPLETED, expired_reason(message.finishes_at), now)
            expired.append(Expired(message.id, message.service_id, message.finishes_at, now))
        return expired

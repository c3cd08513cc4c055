"""The sends of one process to one network, one at a time, with the provider slot's lease handed
from one to the next (tasks/provider_limits.py takes and releases it).

Handing the lease on saves two API calls per send when alerts queue for a network. But a waiter
in another process asks the server, and would never find the slot free while this process has a
queue: a chain of hand-ons starved it. So the lease is handed on only while it is younger than
`HAND_ON_SECONDS`; after that it goes back to the server, and the caller makes this process's
next send wait a little longer than a waiter's poll before asking, so a waiter elsewhere finds the
slot free. A bound in time rather than in sends: a burst of quick sends pays one short pause per
`HAND_ON_SECONDS`, while a burst of slow ones (each longer than the bound) hands nothing on.

Stuck is judged per holder here too: a send waits for its turn as long as the send before it has
had its turn for less than the slot's bound, however long the queue. A send holding its turn
longer (stuck in its call) is passed over; each turn is numbered, so the one passed over ending
later does not end its successor's turn.
"""

from __future__ import annotations

import enum
import threading
import time
import uuid

HAND_ON_SECONDS = 5.0


class HandOn(enum.Enum):
    HANDED = "handed to the next send here"
    NOBODY_WAITING = "no send here waits"
    CHAIN_DONE = "handed on long enough: back to the server"


class Turns:
    """The sends of this process to one network."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.busy = False
        self.waiting = 0
        self.lease_id: uuid.UUID | None = None  # handed on by the last holder
        self.lease_since = 0.0  # when the lease being handed on came from the server
        self.turn = 0  # the number of the current (or last) turn
        self.busy_since = 0.0

    def take(self, timeout_seconds: float) -> tuple[int, uuid.UUID | None]:
        """Waits for this send's turn: (its number, the lease handed to it, if any). The wait ends
        when the send before it has had its turn for `timeout_seconds` (it is stuck): this send
        then takes the next turn with no lease."""
        with self.changed:
            self.waiting += 1
            try:
                while self.busy and (left := self.busy_since + timeout_seconds - time.monotonic()) > 0:
                    self.changed.wait(left)
            finally:
                self.waiting -= 1
            lease_id = None if self.busy else self.lease_id
            self.lease_id = None
            self.turn += 1
            self.busy, self.busy_since = True, time.monotonic()
            return self.turn, lease_id

    def took_from_server(self) -> None:
        with self.changed:
            self.lease_since = time.monotonic()

    def hand_on(self, turn: int, lease_id: uuid.UUID) -> HandOn:
        """Gives the lease to the next send waiting here, if one waits, the chain is young and
        `turn` is still the current one. Otherwise the caller releases the lease, then calls `end`."""
        with self.changed:
            if not self.waiting or turn != self.turn:
                return HandOn.NOBODY_WAITING
            if time.monotonic() - self.lease_since >= HAND_ON_SECONDS:
                return HandOn.CHAIN_DONE
            self.lease_id, self.busy = lease_id, False
            self.changed.notify()
            return HandOn.HANDED

    def end(self, turn: int) -> None:
        """Turn `turn` is over (its lease, if it had one, is back with the server); a turn that was
        passed over has nothing left to end."""
        with self.changed:
            if turn == self.turn:
                self.busy = False
                self.changed.notify()

"""The sends of one process to one network, one at a time (tasks/provider_limits.py).

In front of the database slot (broadcasts/provider_db_slot.py) they keep a burst from holding a
database connection per waiting send: only the send whose turn it is waits on the database, so
however many runs this process has, it holds at most one connection per network for the slot.
Where every sender is in this process (an in-memory SQLite database) the turns are the slot.

Stuck is judged per holder, never by how long a waiter has waited: a send waits for its turn as
long as the send before it has had its turn for less than the slot's bound, however long the
queue (three sends queued behind a slow network made the third give up when it counted its own
wait). A send holding its turn longer (stuck in its call) is passed over; each turn is numbered,
so the one passed over ending later does not end its successor's turn. A turn still waiting for
the database slot is not holding it: the database judges the holders there, and the sends here
wait behind it however long that queue is.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Turn:
    number: int
    passed_over: float | None  # how long the send before it had held its turn, when it was passed over


class Turns:
    """The sends of this process to one network."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.busy = False
        self.turn = 0  # the number of the current (or last) turn
        self.busy_since = 0.0
        self.waiting_elsewhere = False  # the current turn waits for a holder in another process

    def take(self, timeout_seconds: float) -> Turn:
        """Waits for this send's turn. The wait ends early when the send before it has had its
        turn for `timeout_seconds` (it is stuck): this send then takes the next turn, passed over."""
        with self.changed:
            while self.busy and (self.waiting_elsewhere
                                 or (left := self.busy_since + timeout_seconds - time.monotonic()) > 0):
                self.changed.wait(None if self.waiting_elsewhere else left)
            passed_over = time.monotonic() - self.busy_since if self.busy else None
            self.turn += 1
            self.busy, self.busy_since, self.waiting_elsewhere = True, time.monotonic(), False
            return Turn(self.turn, passed_over)

    def waiting_elsewhere_for(self, turn: Turn) -> None:
        """`turn` waits for a holder in another process: it holds nothing yet."""
        with self.changed:
            if turn.number == self.turn:
                self.waiting_elsewhere = True

    def holding(self, turn: Turn) -> None:
        """`turn` holds the slot (or goes without it) from now: its time as holder starts."""
        with self.changed:
            if turn.number == self.turn:
                self.waiting_elsewhere, self.busy_since = False, time.monotonic()
                self.changed.notify_all()

    def end(self, turn: Turn) -> None:
        """`turn` is over; a turn that was passed over has nothing left to end."""
        with self.changed:
            if turn.number == self.turn:
                self.busy, self.waiting_elsewhere = False, False
                self.changed.notify()

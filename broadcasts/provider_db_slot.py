"""The provider slot on a PostgreSQL app database: one session-level advisory lock per network,
on a connection of its own, held only around the proxy call.

Every sender, on every machine, shares the app database, so its lock is a mutex across all of
them, and it costs a few statements on a connection the send has anyway: taken and given back
in about a millisecond, where Prefect's global limit cost three API calls per send (take, the
holder record, release; 80-280 ms for the take alone when four sends asked at once) and tied
every send to the Prefect API (docs/behaviour.md §4). It dies with its holder: a crashed process's
connection closes and the database frees the lock at once, with no lease to wait out.

Only the send whose turn it is in this process waits on the database (broadcasts/slot_turns.py), so a
burst holds one connection per network for the slot, not one per waiting send. It waits in
`pg_advisory_lock` itself, woken the moment the lock is free, for at most `POLL_SECONDS` at a
time (`lock_timeout`); between waits it reads who holds the lock (`pg_locks`: the holder's
backend, and when that backend last changed state, which is when it took the lock, since the
slot's connection runs nothing while it holds it). A holder that has held it for
`timeout_seconds` (on the server's clock; where the server does not show another role's
backends, for as long as this waiter saw the same holder) is stuck in its call (the caller sets
the bound longer than any live call): the send then goes ahead without the slot and says why,
and the caller pages, and every send queued behind the same holder passes it as soon as it
looks. A holder that changes is a slot that moves, so a queue of live holders is never taken
for a stuck one.

A lock whose connection drops during the call (a terminated backend, a database failover) is
gone while its holder runs on, like the per-message lock (broadcasts/send_lock.py): the give-back
then finds nothing to release, logs it, and does not fail the send, whose outcome is already
recorded.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, func, select, text
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from broadcasts.slot_turns import Turns

POLL_SECONDS = 1.0  # how often a waiter looks at who holds the lock; it is woken at once when freed
LOCK_CLASS = 0x63626373  # "cbcs": the first key of every provider slot's two-key advisory lock
_LOCK_NOT_AVAILABLE = "55P03"

logger = logging.getLogger(__name__)
_turns: defaultdict[tuple[str, str], Turns] = defaultdict(Turns)  # per (database, provider), in this process

# The holder of a two-key advisory lock in this database: its backend, when it last changed state,
# and how many seconds ago that was (the server's clock).
_HOLDER = text(
    "SELECT a.pid, a.state_change, EXTRACT(EPOCH FROM clock_timestamp() - a.state_change) "
    "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND l.classid = CAST(:classid AS oid) AND l.objid = CAST(:objid AS oid)"
)


def lock_key(provider: str) -> int:
    """The second key of the provider's lock: stable across processes and releases."""
    return zlib.crc32(provider.encode()) & 0x7FFFFFFF


@contextmanager
def database_slot(engine: Engine, provider: str, timeout_seconds: float) -> Iterator[str | None]:
    """Holds the provider's lock for the body and yields None; or, when its holder (here or in
    another process) kept it for `timeout_seconds`, yields why the body runs without it. A database
    that cannot be reached raises (the send's transient database error)."""
    turns = _turns[(engine.url.render_as_string(hide_password=True), provider)]
    turn = turns.take(timeout_seconds)
    try:
        if turn.passed_over is not None:
            yield (f"the {provider} slot still held after {turn.passed_over:.0f} s by a send in this process "
                   "(stuck in its call); sent without the slot")
            return
        turns.waiting_elsewhere_for(turn)
        connection = engine.connect()
        # A pooled connection must never go back holding the lock: unless it was given back (or
        # never taken), the connection is closed for good, which frees it.
        may_hold = True
        try:
            try:
                stuck = _wait_for_lock(connection, provider, timeout_seconds)
            finally:
                turns.holding(turn)
            if stuck is not None:
                may_hold = False
                connection.close()  # not held through a call made without the slot
                yield stuck
                return
            try:
                yield None
            finally:
                may_hold = not _give_back(connection, provider)
        finally:
            if may_hold:
                connection.invalidate()
            connection.close()
    finally:
        turns.end(turn)


def _wait_for_lock(connection: Connection, provider: str, timeout_seconds: float) -> str | None:
    key = lock_key(provider)
    with connection.begin():  # a free slot, the usual case: one statement
        if connection.scalar(select(func.pg_try_advisory_lock(LOCK_CLASS, key))):
            return None
    since, holder = time.monotonic(), None
    while True:
        wait = max(0.001, min(POLL_SECONDS, since + timeout_seconds - time.monotonic()))
        try:
            with connection.begin():
                connection.execute(text(f"SET LOCAL lock_timeout = {int(wait * 1000)}"))
                connection.execute(select(func.pg_advisory_lock(LOCK_CLASS, key)))
            return None
        except OperationalError as error:
            if getattr(error.orig, "pgcode", None) != _LOCK_NOT_AVAILABLE:
                raise
        with connection.begin():
            now_held_by = connection.execute(_HOLDER, {"classid": LOCK_CLASS, "objid": key}).first()
        if now_held_by is None:  # given back meanwhile: ask again at once
            continue
        pid, taken_at, held_for = now_held_by
        if (pid, taken_at) != holder:
            if holder is not None:  # the slot moved: a live queue, not a stuck holder
                since = time.monotonic()
            holder = (pid, taken_at)
        # Judged by the holder's own time where the server tells it (a send queued behind a stuck
        # holder passes it at once, not a whole bound later), else by how long this waiter saw it.
        if float(held_for if held_for is not None else time.monotonic() - since) >= timeout_seconds:
            return (f"the {provider} slot still held after {timeout_seconds:g} s by database backend {pid} "
                    f"(holding it since {taken_at}, stuck in its call); sent without the slot")


def _give_back(connection: Connection, provider: str) -> bool:
    """Whether the lock is known to be given back; if not, the caller closes the connection."""
    try:
        released = connection.scalar(select(func.pg_advisory_unlock(LOCK_CLASS, lock_key(provider))))
        connection.commit()
    except SQLAlchemyError:
        logger.warning("the %s slot's database connection was lost during the call: the database "
                       "released the slot with it", provider)
        return False
    if not released:
        logger.warning("the %s slot was no longer held when given back (its connection was reset)", provider)
    return True

"""Database-level mutual exclusion for one (event, provider) while its proxy call runs.

Two runs for the same provider message must never call the proxy at the same time, whatever
started them (a duplicate trigger, an operator's replay, a UI retry). The lock dies with its
holder, so a crashed run never blocks the replay that follows it:

- PostgreSQL: a session-level advisory lock, released when the connection closes.
- SQLite file: `flock` on a file beside the database, released when the process exits.
"""

from __future__ import annotations

import fcntl
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, func, select


@contextmanager
def exclusive(engine: Engine, key: uuid.UUID) -> Iterator[bool]:
    """Yields True while this process holds the lock for `key`, or False when another holds it."""
    if engine.dialect.name == "postgresql":
        with _advisory_lock(engine, key) as held:
            yield held
    else:
        with _file_lock(engine, key) as held:
            yield held


@contextmanager
def _advisory_lock(engine: Engine, key: uuid.UUID) -> Iterator[bool]:
    lock_id = int.from_bytes(key.bytes[:8], "big", signed=True)
    with engine.connect() as connection:
        held = bool(connection.scalar(select(func.pg_try_advisory_lock(lock_id))))
        connection.commit()
        try:
            yield held
        finally:
            if held:
                try:
                    connection.scalar(select(func.pg_advisory_unlock(lock_id)))
                    connection.commit()
                except Exception:
                    # A pooled connection must never go back still holding the lock.
                    connection.invalidate()
                    raise


_memory_locks: dict[uuid.UUID, threading.Lock] = {}
_memory_guard = threading.Lock()


@contextmanager
def _file_lock(engine: Engine, key: uuid.UUID) -> Iterator[bool]:
    database = engine.url.database
    if not database or database == ":memory:":
        with _memory_guard:
            lock = _memory_locks.setdefault(key, threading.Lock())
        held = lock.acquire(blocking=False)
        try:
            yield held
        finally:
            if held:
                lock.release()
        return
    directory = Path(f"{database}.send-locks")
    directory.mkdir(exist_ok=True)
    # flock belongs to the open file description, so two threads of one process exclude each
    # other too (fcntl/lockf locks would not).
    descriptor = os.open(directory / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except BlockingIOError:
            held = False
        yield held
    finally:
        os.close(descriptor)  # also releases the lock

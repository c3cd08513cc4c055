"""Database-level mutual exclusion for one (event, provider) while its proxy call runs.

Two runs for the same provider message must never call the proxy at the same time, whatever
started them (a duplicate trigger, an operator's replay, a UI retry). The lock dies with its
holder, so a crashed run never blocks the replay that follows it:

- PostgreSQL: a session-level advisory lock, released when the connection closes.
- SQLite file: `flock` on a file beside the database, released when the process exits.

Dying with its holder cuts both ways: a PostgreSQL lock goes silently when its connection drops
(a network blip, a terminated backend) while the holder runs on. So the work done under it runs
on the lock's own connection (`Lock.transaction`): a transaction that commits there proves the
lock still held, and one that fails with the connection marks it lost (`Lock.lost`). That is
also why what a call did is written there: once the lock is held, the record needs no other
connection, which a database out of connections could refuse. The file and memory locks cannot
be lost while the process lives.
"""

from __future__ import annotations

import fcntl
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.orm import Session

from broadcasts.db import unit_of_work


class Lock:
    """What `exclusive` yields: truthy when this process took the lock."""

    def __init__(self, held: bool, connection: Connection | None = None) -> None:
        self.held = held
        self._connection = connection

    def __bool__(self) -> bool:
        return self.held

    @property
    def lost(self) -> bool:
        """A PostgreSQL lock whose connection has failed (SQLAlchemy invalidates it): gone with it."""
        return self.held and self._connection is not None and self._connection.invalidated

    @contextmanager
    def transaction(self, engine: Engine) -> Iterator[Session]:
        """A unit of work on the lock's own connection while it holds the lock (PostgreSQL); on a
        pooled connection otherwise. A connection that fails loses the lock with it: `lost`, and
        the next transaction takes a pooled one."""
        if self._connection is None or not self.held or self.lost:
            with unit_of_work(engine) as session:
                yield session
            return
        with Session(bind=self._connection, expire_on_commit=False) as session, session.begin():
            yield session


@contextmanager
def exclusive(engine: Engine, key: uuid.UUID) -> Iterator[Lock]:
    """Yields a Lock, truthy while this process holds the lock for `key`, falsy when another holds it."""
    if engine.dialect.name == "postgresql":
        with _advisory_lock(engine, key) as lock:
            yield lock
    else:
        with _file_lock(engine, key) as held:
            yield Lock(held)


@contextmanager
def _advisory_lock(engine: Engine, key: uuid.UUID) -> Iterator[Lock]:
    lock_id = int.from_bytes(key.bytes[:8], "big", signed=True)
    with engine.connect() as connection:
        held = bool(connection.scalar(select(func.pg_try_advisory_lock(lock_id))))
        connection.commit()
        lock = Lock(held, connection)
        try:
            yield lock
        finally:
            # A lost lock's connection is already invalidated: nothing to release.
            if held and not lock.lost:
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

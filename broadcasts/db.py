"""Engines and the one unit-of-work helper that commits.

SQLite (the embedded default) is opened in WAL mode and every transaction starts with
`BEGIN IMMEDIATE`: the dispatcher's threads write concurrently, and a deferred transaction that
later upgrades to a write lock can fail at once instead of waiting for `busy_timeout`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

SQLITE_BUSY_TIMEOUT_SECONDS = 30
# Losing the database connection or waiting out a lock is transient; a bug (IntegrityError) is not.
TRANSIENT_DATABASE_ERRORS = (OperationalError, InterfaceError, PoolTimeout)


@functools.cache
def get_engine(url: str) -> Engine:
    """One engine (and connection pool) per database URL per process."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False}
        )
        _configure_sqlite(engine)
        return engine
    # A send holds a connection through its proxy call (the per-message lock) only while it holds
    # its network's slot, so a process needs about two per network at once plus short reads,
    # however many runs it has (deployments/dispatcher.py runs up to 64).
    return create_engine(driver_url(url), pool_pre_ping=True, pool_size=10, max_overflow=20)


def driver_url(url: str) -> str:
    """`postgresql://` means psycopg2 here (SQLAlchemy 2.1 would otherwise pick psycopg 3)."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        # Let SQLAlchemy, not the driver, decide where transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):  # type: ignore[no-untyped-def]
        connection.exec_driver_sql("BEGIN IMMEDIATE")


@contextmanager
def unit_of_work(engine: Engine) -> Iterator[Session]:
    """A session whose work is committed together on success and rolled back on any error."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session

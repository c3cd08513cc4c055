"""Which providers' slots (tasks/provider_limits.py) someone holds in a test database, seen from
outside: on PostgreSQL the advisory locks in pg_locks, on a SQLite file the lock files (tried
without waiting)."""

from __future__ import annotations

import fcntl
import os

from sqlalchemy import Connection, Engine, text

from broadcasts.providers import PROVIDERS
from broadcasts.provider_db_slot import LOCK_CLASS, lock_key
from broadcasts.provider_file_slot import slot_directory

_HOLDERS = text(
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2 "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND classid = CAST(:c AS oid) AND objid = CAST(:o AS oid)"
)


def slot_holders(connection: Connection, provider: str) -> list[int]:
    """The backends holding the provider's slot in this connection's PostgreSQL database."""
    return list(connection.execute(_HOLDERS, {"c": LOCK_CLASS, "o": lock_key(provider)}).scalars())


def held_slots(engine: Engine) -> list[str]:
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            return [p for p in PROVIDERS if slot_holders(connection, p)]
    directory = slot_directory(str(engine.url.database))
    return [p for p in PROVIDERS if (directory / f"{p}.lock").exists() and _file_held(str(directory / f"{p}.lock"))]


def _file_held(path: str) -> bool:
    descriptor = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)

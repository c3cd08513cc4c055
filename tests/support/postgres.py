"""Throwaway databases on the test PostgreSQL server (TEST_DATABASE_URL), for the tests and the
benchmarks."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from broadcasts.db import driver_url

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def postgres_server_url() -> str:
    return os.environ.get("TEST_DATABASE_URL", DEFAULT_POSTGRES_URL)


@contextmanager
def throwaway_postgres_database(prefix: str, server_url: str | None = None) -> Iterator[str]:
    """A fresh database on `server_url` (default: the test PostgreSQL server), dropped afterwards;
    yields its URL. The benchmarks use it too."""
    server_url = server_url or postgres_server_url()
    # No pool: an idle admin connection per live database adds up under two workers.
    admin = create_engine(driver_url(server_url), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{server_url.rsplit('/', 1)[0]}/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

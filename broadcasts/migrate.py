"""Schema migrations: `upgrade(engine)` brings any database, empty or not, to the newest revision;
`check_schema(engine)` tells a command, before it reads or writes, that it cannot yet."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError


class DatabaseNotReady(Exception):
    """The database cannot be used yet; the message is one line for the operator."""


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    return config


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()  # type: ignore[return-value]


def display_url(engine: Engine) -> str:
    """The URL as the operator wrote it (no driver suffix), without the password."""
    url = engine.url
    # `URL.set(password=None)` would keep the password: None there means "unchanged".
    shown = URL.create(url.get_backend_name(), url.username, None, url.host, url.port, url.database, url.query)
    return shown.render_as_string(hide_password=False)


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str | None]:
    """Migrates to `revision`; returns the revisions (before, after), None meaning no schema."""
    config = alembic_config()
    with _connect(engine) as connection, connection.begin():
        before = _revision(connection)
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        return before, _revision(connection)


def downgrade(engine: Engine, revision: str) -> None:
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def check_schema(engine: Engine) -> None:
    """Raises DatabaseNotReady unless the database is reachable and at the newest revision."""
    missing = f"the database at {display_url(engine)} has no schema; run `broadcasts db upgrade`"
    database = engine.url.database
    # sqlite3 creates the file on connect: a mistyped path must not leave an empty database behind.
    if engine.url.get_backend_name() == "sqlite" and database and database != ":memory:" \
            and not Path(database).exists():
        raise DatabaseNotReady(missing)
    with _connect(engine) as connection:
        current = _revision(connection)
    if current is None:
        raise DatabaseNotReady(missing)
    head = head_revision()
    if current != head:
        raise DatabaseNotReady(f"the database at {display_url(engine)} is at revision {current}, "
                               f"not {head}; run `broadcasts db upgrade`")


def _revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _connect(engine: Engine) -> Connection:
    """A connection, or DatabaseNotReady naming where the database was looked for."""
    try:
        return engine.connect()
    except DBAPIError as error:
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        url = engine.url
        if url.get_backend_name() == "sqlite":
            raise DatabaseNotReady(f"cannot open the SQLite database {url.database}: {reason}") from None
        # psycopg2 says 'connection to server at "h", port p failed: <why>'; the why is enough.
        reason = reason.split(" failed: ", 1)[-1]
        raise DatabaseNotReady(f'cannot connect to PostgreSQL at {url.host}:{url.port or 5432}, '
                               f'database "{url.database}": {reason}') from None

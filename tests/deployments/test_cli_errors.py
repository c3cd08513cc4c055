"""The `broadcasts` command before and around its database and its ports: one line, no traceback.

Every case runs the installed console script as a subprocess, the way an operator meets it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import make_url

from broadcasts.db import get_engine, unit_of_work
from broadcasts.migrate import alembic_config, upgrade
from broadcasts.status import event_status
from tests.conftest import PROJECT_ROOT, backend
from tests.factories import make_alert
from tests.support.postgres import throwaway_postgres_database

BROADCASTS = str(Path(sys.executable).with_name("broadcasts"))
EVENT = str(uuid.uuid4())
POLYGON = "51.5,-0.1 51.6,-0.1 51.6,0.0"

# Every command that reads or writes the app database.
DATABASE_COMMANDS = {
    "event-create": ["event", "create", "--type", "alert", "--body", "hi", "--polygon", POLYGON, "--finishes-in", "1h"],
    "status": ["status", EVENT],
    "send-event": ["send-event", EVENT],
    "replay": ["replay", EVENT, "ee"],
}


def broadcasts(*args: str, database_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "DATABASE_URL": database_url, "COLUMNS": "200", **env}
    environ.pop("PREFECT_API_URL", None)  # none of these cases may get as far as Prefect
    return subprocess.run([BROADCASTS, *args], cwd=PROJECT_ROOT, env=environ,
                          capture_output=True, text=True, timeout=60)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def revisions() -> tuple[str, str]:
    """(the first revision, the newest revision), read from the migration scripts."""
    scripts = ScriptDirectory.from_config(alembic_config())
    return scripts.get_base(), scripts.get_current_head()  # type: ignore[return-value]


@pytest.fixture
def empty_database_url(tmp_path: Path) -> Iterator[str]:
    """A database of the suite's backend that exists but has never been migrated."""
    if backend() == "sqlite":
        path = tmp_path / "empty.db"
        path.touch()  # an empty file is an empty SQLite database
        yield f"sqlite:///{path}"
        return
    with throwaway_postgres_database("broadcasts_empty") as url:
        yield url
        get_engine(url).dispose()  # let the database be dropped


@pytest.mark.parametrize("args", DATABASE_COMMANDS.values(), ids=DATABASE_COMMANDS.keys())
def test_a_command_before_db_upgrade_says_so_and_creates_no_sqlite_file(tmp_path, args):
    for path in (tmp_path / "typo.db", tmp_path / "no-such-directory" / "broadcasts.db"):
        url = f"sqlite:///{path}"
        result = broadcasts(*args, database_url=url)
        assert result.returncode == 2
        assert one_error_line(result) == f"error: the database at {url} has no schema; run `broadcasts db upgrade`"
        assert not path.exists()


@pytest.mark.parametrize("args", DATABASE_COMMANDS.values(), ids=DATABASE_COMMANDS.keys())
def test_a_command_on_an_empty_database_says_to_run_db_upgrade(empty_database_url, args):
    result = broadcasts(*args, database_url=empty_database_url)
    assert result.returncode == 2
    assert one_error_line(result) == (
        f"error: the database at {empty_database_url} has no schema; run `broadcasts db upgrade`")


@pytest.mark.skipif(backend() != "postgresql", reason="a password belongs to a PostgreSQL URL")
def test_the_message_never_shows_the_password(empty_database_url):
    # The test server trusts every local connection, so any password gets in.
    with_password = make_url(empty_database_url).set(password="s3cret").render_as_string(hide_password=False)
    result = broadcasts("status", EVENT, database_url=with_password)
    line = one_error_line(result)
    assert "s3cret" not in line and empty_database_url in line


def test_a_database_behind_the_code_says_to_run_db_upgrade(empty_database_url):
    first, head = revisions()
    if first == head:
        pytest.skip("there is only one revision")
    upgrade(get_engine(empty_database_url), first)
    result = broadcasts("status", EVENT, database_url=empty_database_url)
    assert result.returncode == 2
    assert one_error_line(result) == (
        f"error: the database at {empty_database_url} is at revision {first}, not {head}; "
        "run `broadcasts db upgrade`")


@pytest.mark.parametrize("args", [["db", "upgrade"], *DATABASE_COMMANDS.values()],
                         ids=["db-upgrade", *DATABASE_COMMANDS.keys()])
def test_an_unreachable_postgresql_is_one_line_naming_host_port_and_database(args):
    result = broadcasts(*args, database_url="postgresql://postgres@127.0.0.1:1/x")
    assert result.returncode == 2
    line = one_error_line(result)
    assert line.startswith('error: cannot connect to PostgreSQL at 127.0.0.1:1, database "x": '), line
    assert "refused" in line.lower()


def test_db_upgrade_says_what_it_did(empty_database_url):
    first, head = revisions()
    created = broadcasts("db", "upgrade", database_url=empty_database_url)
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == f"created the schema (revision {head}) in the database at {empty_database_url}"

    again = broadcasts("db", "upgrade", database_url=empty_database_url)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"the database at {empty_database_url} is up to date (revision {head})"


def test_db_upgrade_of_an_older_schema_says_from_which_revision_to_which(empty_database_url):
    first, head = revisions()
    if first == head:
        pytest.skip("there is only one revision")
    upgrade(get_engine(empty_database_url), first)
    result = broadcasts("db", "upgrade", database_url=empty_database_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"migrated the database at {empty_database_url} from revision {first} to {head}")


def test_db_upgrade_into_a_missing_directory_is_one_line(tmp_path):
    path = tmp_path / "no-such-directory" / "broadcasts.db"
    result = broadcasts("db", "upgrade", database_url=f"sqlite:///{path}")
    assert result.returncode == 2
    assert one_error_line(result).startswith(f"error: cannot open the SQLite database {path}: ")


def test_the_simulator_on_a_busy_port_is_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = broadcasts("simulator", "--port", str(port), database_url=f"sqlite:///{tmp_path / 'x.db'}")
    assert result.returncode == 2
    assert one_error_line(result) == f"error: cannot listen on 127.0.0.1:{port}: address already in use"


@pytest.mark.parametrize("port", ["-1", "65536", "70000"])
def test_the_simulator_on_a_port_out_of_range_is_one_line(tmp_path, port):
    result = broadcasts("simulator", "--port", port, database_url=f"sqlite:///{tmp_path / 'x.db'}")
    assert result.returncode == 2
    assert one_error_line(result) == (
        f"error: port {port} is out of range: give 1-65535, or 0 to pick a free port")


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379/0", "redis://127.0.0.1:6379/db", "redis:///0"])
def test_the_server_with_a_redis_url_it_cannot_use_is_one_line_and_starts_nothing(tmp_path, url):
    result = broadcasts("server", "--port", "1", "--redis-url", url, database_url=f"sqlite:///{tmp_path / 'x.db'}")
    assert result.returncode == 2
    assert one_error_line(result) == (
        f"error: --redis-url: not a Redis URL of the form redis://host:6379/0: {url!r}")


def test_the_services_alone_without_redis_is_one_line(tmp_path):
    result = broadcasts("server", "--services-only", database_url=f"sqlite:///{tmp_path / 'x.db'}")
    assert result.returncode == 2
    assert one_error_line(result) == ("error: --services-only needs --redis-url: services apart from the API "
                                      "share its events through Redis")


@pytest.mark.parametrize("secret, problem", [("", "is not set"), ("too-short", "is 9 bytes long; it must be at least 32 bytes")])
@pytest.mark.parametrize("command, why", [(["trigger", EVENT], "the webhook would refuse the request"),
                                          (["serve"], "the webhook needs one (or run with --no-webhook)")])
def test_a_missing_or_short_webhook_secret_is_one_line_before_anything_is_called(tmp_path, secret, problem, command, why):
    result = broadcasts(*command, database_url=f"sqlite:///{tmp_path / 'x.db'}", WEBHOOK_SECRET=secret)
    assert result.returncode == 2
    assert one_error_line(result) == f"error: WEBHOOK_SECRET {problem}: {why}"


def test_every_operator_error_the_command_turns_into_one_line_names_a_real_exception():
    import importlib

    from deployments.command import RAISED_BY

    for module, name in RAISED_BY:
        assert issubclass(getattr(importlib.import_module(module), name), Exception), (module, name)


@pytest.mark.parametrize("command", [["send-event"], ["replay", "ee"]], ids=["send-event", "replay"])
def test_a_prefect_api_that_does_not_answer_is_one_line_and_sends_nothing(engine, database_url, command):
    _, _, event_id = make_alert(engine)
    environ = {**os.environ, "DATABASE_URL": database_url, "COLUMNS": "200",
               "PREFECT_API_URL": "http://127.0.0.1:1/api"}
    result = subprocess.run([BROADCASTS, command[0], str(event_id), *command[1:]], cwd=PROJECT_ROOT, env=environ,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    line = one_error_line(result)
    assert line.startswith("error: cannot reach the Prefect API at http://127.0.0.1:1/api: "), line
    assert "refused" in line.lower(), line
    with unit_of_work(engine) as session:
        assert event_status(session, event_id) == []  # no provider message was created

"""Shared fixtures. The whole suite runs once per database: `TEST_DATABASE=sqlite` (default) or
`TEST_DATABASE=postgresql`, which creates a throwaway database on `TEST_DATABASE_URL`'s server
and drops it at the end."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from broadcasts import settings as settings_module
from broadcasts.db import get_engine
from broadcasts.migrate import upgrade
from tests.support.postgres import throwaway_postgres_database
from tests.support.prefect_server import PrefectServer, running

pytest_plugins = ["tests.simulator_fixture"]


def backend() -> str:
    return os.environ.get("TEST_DATABASE", "sqlite")


# Fixtures that start a Prefect server. A test on one (directly or through other fixtures), or
# marked `prefect`, meets the same PostgreSQL-backed Prefect in both passes and mostly tests the
# Prefect side, so the SQLite pass leaves it to the PostgreSQL pass (which runs everything) unless
# it is marked `sqlite`: its behaviour differs on the SQLite app database. So does a test that
# never meets the pass's database (none of APP_DATABASE_FIXTURES among its fixtures): it is the
# same test in both passes, a SQLite file it makes for itself included.
PREFECT_SERVER_FIXTURES = frozenset({"prefect_server", "scheduling_server"})
# The fixtures whose database is the pass's (`TEST_DATABASE`): the suite's, or an empty one of the same kind.
APP_DATABASE_FIXTURES = frozenset({"database_url", "empty_engine", "empty_database_url"})
_left_to_postgresql = pytest.StashKey[int]()
_prefect_home = pytest.StashKey[str]()


def needs_prefect_server(item: pytest.Item) -> bool:
    fixtures = set(getattr(item, "fixturenames", ()))
    return bool(fixtures & PREFECT_SERVER_FIXTURES) or item.get_closest_marker("prefect") is not None


def differs_on_sqlite(item: pytest.Item) -> bool:
    """Whether the SQLite pass runs it: marked `sqlite`, or on the app database without a Prefect server."""
    if item.get_closest_marker("sqlite") is not None:
        return True
    return bool(APP_DATABASE_FIXTURES & set(getattr(item, "fixturenames", ()))) and not needs_prefect_server(item)


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`make test` runs two workers) each worker gets a Prefect home of its
    own: a one-off command's temporary Prefect server keeps its SQLite database there, and two
    workers migrating one database at once would collide."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        home = tempfile.mkdtemp(prefix=f"broadcasts-tests-{worker}-prefect-")
        config.stash[_prefect_home] = home
        os.environ["PREFECT_HOME"] = home


def pytest_unconfigure(config: pytest.Config) -> None:
    if home := config.stash.get(_prefect_home, None):
        shutil.rmtree(home, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The longest modules first (`long(seconds)`): started last, one of them alone would keep the
    # run going long after the other workers are done (the Makefile turns off pytest-xdist's own
    # reordering, which puts the modules with the most tests first).
    items.sort(key=lambda item: -(marker.args[0] if (marker := item.get_closest_marker("long")) else 0))
    if backend() != "sqlite":
        return
    kept, left = [], []
    for item in items:
        (kept if differs_on_sqlite(item) else left).append(item)
    config.stash[_left_to_postgresql] = len(left)
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = kept


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    left = config.stash.get(_left_to_postgresql, 0)
    if left:
        terminalreporter.write_line(
            f"SQLite pass: {left} tests left to the PostgreSQL pass (Prefect-server tests not marked "
            "`sqlite`, and tests that never meet this pass's database)")


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if backend() == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'broadcasts.db'}"
        return
    with throwaway_postgres_database("broadcasts_test") as url:
        yield url
        get_engine.cache_clear()


@pytest.fixture(scope="session")
def engine(database_url: str) -> Engine:
    """The migrated test database (tests create their own rows with fresh ids, so they share it)."""
    engine = get_engine(database_url)
    upgrade(engine)
    return engine


@pytest.fixture(autouse=True)
def no_route_advice(request: pytest.FixtureRequest) -> None:
    """Tests share the database, and a route one test saw working would be tried first by the
    next (docs/behaviour.md §3, the route advisor): each test on the database starts with none."""
    if "engine" in request.fixturenames or "environment" in request.fixturenames:
        from sqlalchemy import delete

        from broadcasts.models import RouteAdvice

        with request.getfixturevalue("engine").begin() as connection:
            connection.execute(delete(RouteAdvice))


@pytest.fixture(scope="session")
def environment(database_url: str, simulator, tmp_path_factory) -> Iterator[dict[str, str]]:  # type: ignore[no-untyped-def]
    """The dispatcher's configuration for tests: the test database, the simulator, fast retries."""
    values = {
        "DATABASE_URL": database_url,
        "CBC_PROXY_ENDPOINT_URL": simulator.url,
        "CBC_PROXY_FUNCTION_PREFIX": "",
        "CBC_PROXY_CONNECT_TIMEOUT": "1",
        "CBC_PROXY_READ_TIMEOUT": "2",
        "ENABLED_CBCS": "ee,three,o2,vodafone",
        "BROADCAST_RETRY_DELAY_SCALE": "0.01",
        "CBC_PROXY_ENABLED": "true",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
    }
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    settings_module.get_settings.cache_clear()
    yield values
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    settings_module.get_settings.cache_clear()


@pytest.fixture
def configure(environment: dict[str, str], monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Override settings for one test: `configure(ENABLED_CBCS="ee,vodafone")`."""

    def apply(**values: str) -> None:
        for key, value in values.items():
            monkeypatch.setenv(key, value)
        settings_module.get_settings.cache_clear()

    yield apply
    settings_module.get_settings.cache_clear()


@pytest.fixture(scope="session")
def prefect_server(environment: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prefect server for the session, backed by PostgreSQL (Prefect's SQLite backend
    answers concurrent writes with 503s and client back-off, which makes retry timing noisy)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with throwaway_postgres_database("prefect_test") as url:
        server = PrefectServer(tmp_path_factory.mktemp("prefect"), os.environ,
                               ["--no-scheduler", "--no-late-runs", "--no-ui"], database_url=url)
        with running(server):
            try:
                os.environ["PREFECT_API_URL"] = server.api  # for subprocesses the tests start
                with temporary_settings(updates={PREFECT_API_URL: server.api}):
                    yield server.api
            finally:
                from prefect.logging.handlers import APILogHandler

                APILogHandler().flush()  # send the last run logs while the server still listens
                os.environ.pop("PREFECT_API_URL", None)


PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def slot_pages(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The slot-stuck events (tasks/provider_limits.py) emitted by a test without a Prefect server,
    recorded here: Prefect's events client would otherwise start an ephemeral Prefect server in
    the background, which outlives the test's process. (Through a real server:
    tests/tasks/test_provider_slot.py.)"""
    emitted: list[dict[str, Any]] = []
    if not needs_prefect_server(request.node):
        from tasks import provider_limits

        monkeypatch.setattr(provider_limits, "emit_event", lambda **event: emitted.append(event))
    return emitted

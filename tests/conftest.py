"""Shared fixtures. The whole suite runs once per database: `TEST_DATABASE=sqlite` (default) or
`TEST_DATABASE=postgresql`, which creates a throwaway database on `TEST_DATABASE_URL`'s server
and drops it at the end."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from broadcasts import settings as settings_module
from broadcasts.db import driver_url, get_engine
from broadcasts.migrate import upgrade

pytest_plugins = ["tests.simulator_fixture"]

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def backend() -> str:
    return os.environ.get("TEST_DATABASE", "sqlite")


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if backend() == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'broadcasts.db'}"
        return
    server_url = os.environ.get("TEST_DATABASE_URL", DEFAULT_POSTGRES_URL)
    admin = create_engine(driver_url(server_url), isolation_level="AUTOCOMMIT")
    name = f"broadcasts_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    base = server_url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        get_engine.cache_clear()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def engine(database_url: str) -> Engine:
    """The migrated test database (tests create their own rows with fresh ids, so they share it)."""
    engine = get_engine(database_url)
    upgrade(engine)
    return engine


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
def prefect_server(environment: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One temporary Prefect server for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


PROJECT_ROOT = Path(__file__).resolve().parents[1]

"""With the Prefect server's basic auth on, `serve`, the webhook and the CLI work with the auth
string, and a call without it is refused."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

from broadcasts.settings import get_settings
from deployments.server import server_environment
from deployments.webhook import create_app
from tests.conftest import PROJECT_ROOT, backend
from tests.support.prefect_server import PrefectServer, running
from tests.support.postgres import throwaway_postgres_database
from tests.deployments.serving import serving

AUTH = "operator:correct-horse-battery-staple"
pytestmark = pytest.mark.skipif(backend() != "postgresql", reason="the production setup (PostgreSQL for "
                                "Prefect): this test runs in the PostgreSQL pass of `make test`")


@pytest.fixture(scope="module")
def guarded_api(environment, tmp_path_factory) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A Prefect server (on PostgreSQL) started as `broadcasts server` starts it, with auth on."""
    with throwaway_postgres_database("prefect_auth") as url:
        server = PrefectServer(tmp_path_factory.mktemp("auth"), server_environment({
            **os.environ, "PREFECT_SERVER_API_AUTH_STRING": AUTH}), database_url=url)
        with running(server):  # /health answers without auth
            yield server.api


def cli(api: str, *args: str, auth: str | None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PREFECT_API_URL": api}
    env.pop("PREFECT_API_AUTH_STRING", None)
    if auth:
        env["PREFECT_API_AUTH_STRING"] = auth
    return subprocess.run([sys.executable, "-m", "deployments.cli", *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_call_without_the_auth_string_is_refused(guarded_api):
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{guarded_api}/work_pools/filter", data=b"{}", timeout=10)
    assert refused.value.code == 401
    result = cli(guarded_api, "bootstrap", auth=None)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "PREFECT_API_AUTH_STRING" in result.stderr, result.stderr


def test_the_cli_serve_and_the_webhook_work_with_the_auth_string(guarded_api, configure, monkeypatch):
    result = cli(guarded_api, "bootstrap", auth=AUTH)
    assert result.returncode == 0, result.stderr
    assert "work pool broadcasts" in result.stdout

    monkeypatch.setenv("PREFECT_API_URL", guarded_api)
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", AUTH)
    configure(WEBHOOK_SECRET="s" * 32)
    with serving() as served:
        assert "serving: send-broadcast-event/send-broadcast-event" in served.text()
    with temporary_settings(updates={PREFECT_API_URL: guarded_api, PREFECT_API_AUTH_STRING: AUTH}):
        assert TestClient(create_app(get_settings())).get("/healthz").status_code == 200
    with temporary_settings(updates={PREFECT_API_URL: guarded_api, PREFECT_API_AUTH_STRING: None}):
        health = TestClient(create_app(get_settings())).get("/healthz")
    assert health.status_code == 503 and "401" in health.text

"""Configuration: one validated object built on demand, with errors that name the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from broadcasts import settings as settings_module
from broadcasts.settings import Settings, describe_invalid_settings, get_settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
VARIABLES = {name.upper() for name in Settings.model_fields}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """No dispatcher variable set (in any case), a fresh cwd, and no cached settings."""
    for key in list(os.environ):
        if key.upper() in VARIABLES:
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


# --- defaults -------------------------------------------------------------------------------


def test_enabled_cbcs_defaults_to_all_four_providers_in_spec_order():
    assert Settings().enabled_cbcs == ("ee", "three", "o2", "vodafone")


def test_other_defaults():
    settings = Settings()
    assert settings.aws_region == "eu-west-2"
    assert settings.link_test_cron == "*/15 * * * *"
    assert settings.broadcast_headline == "GOV.UK Notify Broadcast"
    assert settings.webhook_secret is None
    assert settings.cbc_proxy_enabled is True
    assert settings.cbc_proxy_endpoint_url is None
    assert settings.cbc_proxy_function_prefix == ""
    assert settings.broadcast_retry_delay_scale == 1.0
    assert settings.crashed_after_missed_heartbeats == 3


def test_read_timeout_is_longer_than_connect_timeout_by_default():
    settings = Settings()
    assert 0 < settings.cbc_proxy_connect_timeout < settings.cbc_proxy_read_timeout


def test_database_url_defaults_to_a_sqlite_file_in_the_working_directory(tmp_path: Path):
    url = Settings().database_url
    assert url.startswith("sqlite:///")
    path = Path(url.removeprefix("sqlite:///"))
    assert path.name == "broadcasts.db"
    assert path.parent.resolve() == tmp_path.resolve()


# --- values from the environment ------------------------------------------------------------


def test_enabled_cbcs_keeps_the_order_it_is_given_in(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ENABLED_CBCS", "vodafone, ee")
    assert Settings().enabled_cbcs == ("vodafone", "ee")


def test_enabled_cbcs_ignores_case_and_blank_entries(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ENABLED_CBCS", " O2 ,, Three ,")
    assert Settings().enabled_cbcs == ("o2", "three")


@pytest.mark.parametrize("value, expected", [("false", False), ("0", False), ("true", True), ("1", True)])
def test_cbc_proxy_enabled_reads_booleans(monkeypatch: pytest.MonkeyPatch, value, expected):
    monkeypatch.setenv("CBC_PROXY_ENABLED", value)
    assert Settings().cbc_proxy_enabled is expected


def test_an_empty_endpoint_url_means_real_aws(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CBC_PROXY_ENDPOINT_URL", "")
    assert Settings().cbc_proxy_endpoint_url is None


@pytest.mark.parametrize(
    "url", ["sqlite:////tmp/x.db", "postgresql://u@h/db", "postgresql+psycopg2://u@h:5432/db"]
)
def test_sqlite_and_postgresql_database_urls_are_accepted(monkeypatch: pytest.MonkeyPatch, url):
    monkeypatch.setenv("DATABASE_URL", url)
    assert Settings().database_url == url


def test_webhook_secret_is_kept_secret_when_printed(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WEBHOOK_SECRET", "s3cret-value")
    settings = Settings()
    assert settings.webhook_secret is not None
    assert settings.webhook_secret.get_secret_value() == "s3cret-value"
    assert "s3cret-value" not in repr(settings)
    assert "s3cret-value" not in str(settings)


# --- invalid values -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "variable, value",
    [
        ("ENABLED_CBCS", "ee,orange"),
        ("ENABLED_CBCS", "ee,ee"),
        ("ENABLED_CBCS", "vodafone, VODAFONE"),
        ("LINK_TEST_CRON", "every 15 minutes"),
        ("LINK_TEST_CRON", "61 * * * *"),
        ("DATABASE_URL", "mysql://localhost/broadcasts"),
        ("DATABASE_URL", "broadcasts.db"),
        ("CBC_PROXY_ENABLED", "maybe"),
        ("CBC_PROXY_CONNECT_TIMEOUT", "0"),
        ("BROADCAST_HEADLINE", ""),
        ("CRASHED_AFTER_MISSED_HEARTBEATS", "1"),
    ],
)
def test_an_invalid_variable_raises_and_the_description_names_it(monkeypatch: pytest.MonkeyPatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as raised:
        Settings()
    description = describe_invalid_settings(raised.value)
    assert description.startswith(f"invalid configuration: {variable}: ")
    assert len(description.splitlines()) == 1


def test_an_unknown_provider_is_named_with_the_known_ones(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ENABLED_CBCS", "ee,orange")
    with pytest.raises(ValidationError) as raised:
        Settings()
    description = describe_invalid_settings(raised.value)
    assert "orange" in description
    assert "ee, three, o2, vodafone" in description


def test_every_invalid_variable_gets_its_own_line(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ENABLED_CBCS", "orange")
    monkeypatch.setenv("DATABASE_URL", "mysql://x")
    with pytest.raises(ValidationError) as raised:
        Settings()
    lines = describe_invalid_settings(raised.value).splitlines()
    assert len(lines) == 2
    assert {line.split(": ")[1] for line in lines} == {"ENABLED_CBCS", "DATABASE_URL"}


# --- built on demand ------------------------------------------------------------------------


def test_get_settings_builds_once_and_rebuilds_after_cache_clear(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    first = get_settings()
    assert first is get_settings()
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    assert get_settings().aws_region == "eu-west-1"
    get_settings.cache_clear()
    assert get_settings().aws_region == "eu-west-3"


def test_get_settings_raises_validation_error_for_a_bad_variable(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ENABLED_CBCS", "orange")
    with pytest.raises(ValidationError):
        settings_module.get_settings()


def run_python(code: str, environment: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, env=environment,
        capture_output=True, text=True, timeout=60,
    )


def test_importing_settings_with_an_empty_environment_succeeds():
    result = run_python("import broadcasts.settings", {})
    assert result.returncode == 0, result.stderr


def test_importing_settings_does_not_read_the_environment():
    code = (
        "import broadcasts.settings as s\n"
        "assert s.get_settings.cache_info().currsize == 0, 'settings built at import'\n"
        "try:\n"
        "    s.get_settings()\n"
        "except s.ValidationError as error:\n"
        "    print(s.describe_invalid_settings(error))\n"
    )
    result = run_python(code, {"ENABLED_CBCS": "orange", "DATABASE_URL": "mysql://x"})
    assert result.returncode == 0, result.stderr
    assert "ENABLED_CBCS" in result.stdout
    assert "DATABASE_URL" in result.stdout

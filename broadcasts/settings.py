"""Configuration, read once from the environment into one validated object.

Nothing here runs at import: `get_settings()` builds the object on first use, so importing any
package with an empty environment succeeds and a bad value fails when the program starts, with a
message naming the variable (`describe_invalid_settings`).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from broadcasts.providers import PROVIDERS

DEFAULT_ENABLED_CBCS = ("ee", "three", "o2", "vodafone")
# CRASHED_AFTER_MISSED_HEARTBEATS: one late heartbeat is a busy machine; three is a dead process.
DEFAULT_MISSED_HEARTBEATS = 3


def default_database_url() -> str:
    return f"sqlite:///{Path(os.getcwd()) / 'broadcasts.db'}"


class Settings(BaseSettings):
    """Every environment variable the dispatcher reads (names are the upper-cased field names)."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    database_url: str = Field(default_factory=default_database_url)
    cbc_proxy_enabled: bool = True
    enabled_cbcs: Annotated[tuple[str, ...], NoDecode] = DEFAULT_ENABLED_CBCS
    # The networks whose proxies reach a second CBC (`cbc_b`): four routes each, the others two.
    cbc_b_providers: Annotated[tuple[str, ...], NoDecode] = DEFAULT_ENABLED_CBCS
    # How long the last route that worked for a network is tried first (docs/behaviour.md §3).
    route_advice_seconds: float = Field(default=30.0, ge=0)
    cbc_proxy_endpoint_url: str | None = None
    cbc_proxy_function_prefix: str = ""
    cbc_proxy_connect_timeout: float = Field(default=3.0, gt=0)
    # Longer than the proxy Lambda's own timeout, so a slow proxy answers before we give up.
    cbc_proxy_read_timeout: float = Field(default=60.0, gt=0)
    aws_region: str = "eu-west-2"
    broadcast_headline: str = Field(default="GOV.UK Notify Broadcast", min_length=1)
    webhook_secret: SecretStr | None = None
    link_test_cron: str = "*/15 * * * *"
    # `<block type slug>/<block name>` of the Prefect notification block operator alerts go to.
    alert_notification_block: str | None = Field(default=None, pattern=r"^[a-z0-9-]+/[^/]+$")
    broadcast_retry_delay_scale: float = Field(default=1.0, ge=0)
    # How often resume looks for events left undispatched, and how long after an event is written
    # it leaves the event to its own trigger first (docs/behaviour.md §7).
    resume_interval_seconds: float = Field(default=60.0, gt=0)
    resume_grace_seconds: float = Field(default=30.0, gt=0)
    # How often expire-broadcasts completes the broadcasts past their finish time (docs/behaviour.md §7).
    expiry_interval_seconds: float = Field(default=60.0, gt=0)
    # How many of its heartbeats a run may miss before it is marked Crashed and resumed: one late
    # heartbeat is a busy machine, so at least two (docs/behaviour.md §7).
    crashed_after_missed_heartbeats: int = Field(default=DEFAULT_MISSED_HEARTBEATS, ge=2)

    @field_validator("enabled_cbcs", "cbc_b_providers", mode="before")
    @classmethod
    def _split_providers(cls, value: object) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [part.strip().lower() for part in value.split(",") if part.strip()]
        names = tuple(value)  # type: ignore[arg-type]
        unknown = [name for name in names if name not in PROVIDERS]
        if unknown:
            raise ValueError(f"unknown provider(s) {', '.join(unknown)}; known: {', '.join(PROVIDERS)}")
        if len(set(names)) != len(names):
            raise ValueError("a provider is listed twice")
        return names

    @field_validator("cbc_proxy_endpoint_url", mode="before")
    @classmethod
    def _empty_endpoint_means_aws(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql://", "postgresql+psycopg2://")):
            raise ValueError("must be a sqlite:// or postgresql:// URL")
        return value

    @field_validator("link_test_cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        from cronsim import CronSim, CronSimError  # the cron parser Prefect itself uses

        try:
            CronSim(value, __import__("datetime").datetime(2000, 1, 1))
        except CronSimError as error:
            raise ValueError(f"not a cron expression: {error}") from None
        return value


@functools.cache
def get_settings() -> Settings:
    return Settings()


def describe_invalid_settings(error: ValidationError) -> str:
    """One line per bad variable, named the way the operator set it."""
    lines = []
    for problem in error.errors():
        variable = str(problem["loc"][0]).upper() if problem["loc"] else "configuration"
        lines.append(f"invalid configuration: {variable}: {problem['msg']}")
    return "\n".join(lines)

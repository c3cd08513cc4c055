"""`broadcasts server`: `prefect server start` with the settings this service needs, so no
operator has to discover them.

- Leases of concurrency slots on the filesystem: the in-memory default forgets them when the
  server restarts. Only Prefect's concurrency limits use them here (the link-tests deployment's
  limit of 1); the provider slot is not one (tasks/provider_limits.py).
- Slot waits capped at 1 s: the 10-30 s defaults would hold an alert back that long.
- No analytics (the server runs on a closed network).
- Prefect's own database on PostgreSQL when `PREFECT_SERVER_DATABASE_CONNECTION_URL` is set (the
  SQLite default answers concurrent writes with HTTP 503: fine for a demo, not for production).
- Basic auth when `PREFECT_SERVER_API_AUTH_STRING` is set (then every client needs
  `PREFECT_API_AUTH_STRING`): whoever reaches the API can start sends and change the limits.

High availability (`--redis-url`): several API replicas on one PostgreSQL database, each started
with `--no-services`, and the background services (scheduler, automations, late and zombie runs,
expired leases) in one more process (`--services-only`). Events, the event cache, causal ordering
and concurrency leases then live in Redis, so every replica sees every event and every lease; and
the services' jobs go to Redis too (the next database number), since the in-memory default would
schedule runs and fire automations once per process.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

SERVER_SETTINGS = {
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem",
    "PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS": "1",
    "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "1",
    "PREFECT_SERVER_TASKS_TAG_CONCURRENCY_SLOT_WAIT_SECONDS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


class BadRedisUrl(ValueError):
    pass


def ha_settings(redis_url: str) -> dict[str, str]:
    """The settings every process of an HA Prefect (replicas and services) needs, for the Redis at
    `redis_url` (`redis://host:port/N`): messaging in database N, background jobs in N + 1."""
    parts = urlsplit(redis_url)
    database = parts.path.strip("/") or "0"
    if parts.scheme not in ("redis", "rediss") or not parts.hostname or not database.isdigit():
        raise BadRedisUrl(f"not a Redis URL of the form redis://host:6379/0: {redis_url!r}")
    jobs = urlunsplit((parts.scheme, parts.netloc, f"/{int(database) + 1}", "", ""))
    return {
        "PREFECT_SERVER_EVENTS_MESSAGING_BROKER": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_MESSAGING_CACHE": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
        "PREFECT_REDIS_MESSAGING_URL": urlunsplit((parts.scheme, parts.netloc, f"/{database}", "", "")),
        "PREFECT_SERVER_DOCKET_URL": jobs,
    }


def server_environment(environ: Mapping[str, str], redis_url: str | None = None) -> dict[str, str]:
    """`environ` with the service's server settings (and, given `redis_url`, the HA ones, which
    win over a filesystem lease storage) added where the operator set none."""
    return {**SERVER_SETTINGS, **(ha_settings(redis_url) if redis_url else {}), **environ}


def command(host: str, port: int, ui: bool = True, services: bool = True) -> list[str]:
    return [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port),
            "--analytics-off", *([] if ui else ["--no-ui"]), *([] if services else ["--no-services"])]


def services_command() -> list[str]:
    return [sys.executable, "-m", "prefect", "server", "services", "start"]


def start(host: str, port: int, ui: bool = True, services: bool = True, redis_url: str | None = None,
          services_only: bool = False) -> None:
    """Replaces this process with the Prefect server, or with its services alone (so signals reach
    it directly). Raises BadRedisUrl, before anything starts, for a `redis_url` it cannot use."""
    argv = services_command() if services_only else command(host, port, ui, services)
    environ = dict(os.environ)
    if redis_url:  # an explicit --redis-url wins over a lease storage left in the environment
        environ.pop("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", None)
    os.execve(argv[0], argv, server_environment(environ, redis_url))

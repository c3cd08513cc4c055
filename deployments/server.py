"""`broadcasts server`: `prefect server start` with the settings this service needs, so no
operator has to discover them.

- Leases of concurrency slots on the filesystem: the in-memory default forgets them when the
  server restarts, leaving a held `cbc-<provider>` slot taken for ever.
- Slot waits capped at 1 s: the 10-30 s defaults would hold an alert back that long.
- No analytics (the server runs on a closed network).
- Prefect's own database on PostgreSQL when `PREFECT_SERVER_DATABASE_CONNECTION_URL` is set (the
  SQLite default answers concurrent writes with HTTP 503: fine for a demo, not for production).
- Basic auth when `PREFECT_SERVER_API_AUTH_STRING` is set (then every client needs
  `PREFECT_API_AUTH_STRING`): whoever reaches the API can start sends and change the limits.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

SERVER_SETTINGS = {
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem",
    "PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS": "1",
    "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "1",
    "PREFECT_SERVER_TASKS_TAG_CONCURRENCY_SLOT_WAIT_SECONDS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


def server_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` with the service's server settings added where the operator set none."""
    return {**SERVER_SETTINGS, **environ}


def command(host: str, port: int, ui: bool = True) -> list[str]:
    return [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port),
            "--analytics-off", *([] if ui else ["--no-ui"])]


def start(host: str, port: int, ui: bool = True) -> None:
    """Replaces this process with the Prefect server (so signals reach it directly)."""
    argv = command(host, port, ui)
    os.execve(argv[0], argv, server_environment(os.environ))

"""The one way the tests start a Prefect server of their own: `prefect server start` on 127.0.0.1,
on a port it keeps across restarts, in its own process group (the API runs in a child process),
with its PREFECT_HOME and its log (`server.log`) in `home`. Prefect's database is `database_url`
(PostgreSQL) or, without one, a SQLite file in `home`. `broadcasts server`'s own settings are
`deployments.server.server_environment`: a caller that wants them passes that environment."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.support.processes import Process, free_port, wait_for_http

HEALTHY_WITHIN_SECONDS = 90
# Two test workers share PostgreSQL's 100 connections with every server, dispatcher and webhook
# they start (the HA stack alone runs three Prefect servers): Prefect's default pool (5, and 10
# more under load) per server ran it out of connections. A test server needs few.
SMALL_POOL = {"PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE": "2", "PREFECT_SERVER_DATABASE_SQLALCHEMY_MAX_OVERFLOW": "6"}


class PrefectServer:
    def __init__(self, home: Path, environ: Mapping[str, str], options: Sequence[str] = ("--no-ui",),
                 database_url: str | None = None) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.home = home
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.env = {**SMALL_POOL, **environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        self.env.pop("PREFECT_API_URL", None)
        if database_url:
            self.env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url.replace(
                "postgresql://", "postgresql+asyncpg://", 1)
        self.argv = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                     "--port", str(self.port), "--analytics-off", *options]
        self.process: Process | None = None

    def start(self) -> None:
        """Starts it and waits until /health answers (StackError with the log's end if not)."""
        self.process = Process.start("server", self.argv, self.env, self.home)
        wait_for_http(f"{self.api}/health", self.process, HEALTHY_WITHIN_SECONDS)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not ended within 15 s."""
        if self.process is not None:
            self.process.stop()

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()


@contextmanager
def running(server: PrefectServer) -> Iterator[PrefectServer]:
    """The server started and healthy for the block, stopped after it however it ends."""
    try:
        server.start()
        yield server
    finally:
        server.stop()

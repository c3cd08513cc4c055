"""The one way the tests start a Prefect server of their own: `prefect server start` on 127.0.0.1,
on a port it keeps across restarts, in its own process group (the API runs in a child process),
with its PREFECT_HOME and its log (`server.log`) in `home`. Prefect's database is `database_url`
(PostgreSQL) or, without one, a SQLite file in `home`. `broadcasts server`'s own settings are
`deployments.server.server_environment`: a caller that wants them passes that environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.processes import free_port

HEALTHY_WITHIN_SECONDS = 90


class PrefectServer:
    def __init__(self, home: Path, environ: Mapping[str, str], options: Sequence[str] = ("--no-ui",),
                 database_url: str | None = None) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.log = home / "server.log"
        self.env = {**environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        self.env.pop("PREFECT_API_URL", None)
        if database_url:
            self.env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url.replace(
                "postgresql://", "postgresql+asyncpg://", 1)
        self.argv = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                     "--port", str(self.port), "--analytics-off", *options]
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        """Starts it and waits until /health answers (a test failure with the log's end if not)."""
        with open(self.log, "a") as output:
            self.process = subprocess.Popen(self.argv, env=self.env, stdout=output, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + HEALTHY_WITHIN_SECONDS
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.api}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        pytest.fail(f"the Prefect server did not become healthy:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not ended within 15 s."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        assert self.process is not None
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(15)


@contextmanager
def running(server: PrefectServer) -> Iterator[PrefectServer]:
    """The server started and healthy for the block, stopped after it however it ends."""
    try:
        server.start()
        yield server
    finally:
        server.stop()

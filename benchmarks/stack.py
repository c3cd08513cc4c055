"""The whole service on this machine, on production settings, for the benchmarks: two throwaway
PostgreSQL databases (the app's and Prefect's; or, embedded, the demo's SQLite files),
`broadcasts server`, the simulator, the schema, and `broadcasts serve` with its webhook. Each process runs in its own process group, and every
one is stopped (and both databases dropped) however the benchmark ends."""

from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine, text

from deployments import server as prefect_server
# The test suite's helpers (dev extra, as `make bench` installs).
from tests.support.postgres import throwaway_postgres_database
from tests.support.processes import (
    BROADCASTS, ROOT, Process, StackError, clean_environ, free_port, wait_for_http,
)

POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def postgres_version() -> str:
    admin = create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg2://", 1))
    try:
        with admin.connect() as connection:
            return str(connection.execute(text("SHOW server_version")).scalar()).split()[0]
    finally:
        admin.dispose()


@dataclass
class Stack:
    directory: Path
    app_database_url: str
    prefect_database_url: str
    api_url: str = ""
    auth_string: str = ""
    simulator_url: str = ""
    webhook_url: str = ""
    webhook_secret: str = ""
    processes: dict[str, Process] = field(default_factory=dict)

    def start(self, stack: ExitStack, name: str, argv: list[str], env: dict[str, str]) -> Process:
        process = Process.start(name, argv, env, self.directory)
        self.processes[name] = process
        stack.callback(process.stop)
        return process

    def app_environment(self) -> dict[str, str]:
        """What the dispatcher's processes (and this one) read: production values, except the
        proxy endpoint (the simulator), dummy AWS credentials for it and yearly link tests."""
        return {
            "DATABASE_URL": self.app_database_url,
            "CBC_PROXY_ENDPOINT_URL": self.simulator_url,
            "CBC_PROXY_FUNCTION_PREFIX": "",
            "ENABLED_CBCS": "ee,three,o2,vodafone",
            "CBC_PROXY_ENABLED": "true",
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "PREFECT_API_URL": self.api_url,
            "PREFECT_API_AUTH_STRING": self.auth_string,
            "PREFECT_HOME": str(self.directory / "prefect-home"),
            "WEBHOOK_SECRET": self.webhook_secret,
            # Link tests once a year: a quarter-hour's link tests would call every route in the
            # middle of a measurement and rewrite the route advice the retry measurement relies on.
            "LINK_TEST_CRON": "0 0 1 1 *",
        }

    def serve(self, stack: ExitStack, *options: str) -> Process:
        port = free_port()
        env = {**clean_environ(), **self.app_environment()}
        name = "serve" + "".join(options).replace("--", "-")
        process = self.start(stack, name, [BROADCASTS, "serve", "--webhook-port", str(port), *options], env)
        process.wait_for_line("serving:", 180)
        self.webhook_url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{self.webhook_url}/healthz", process, 30)
        return process


@contextmanager
def running_stack(embedded: bool = False) -> Iterator[tuple[Stack, ExitStack]]:
    """Databases, Prefect server, simulator and schema; `Stack.serve` starts the service.
    `embedded`: `make demo`'s defaults instead, a SQLite file for the app and Prefect's own SQLite
    database."""
    with ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="broadcasts-bench-")))
        if embedded:
            app_url, prefect_url = f"sqlite:///{directory / 'broadcasts.db'}", ""
        else:
            app_url = stack.enter_context(throwaway_postgres_database("broadcasts_bench", POSTGRES_URL))
            prefect_url = stack.enter_context(throwaway_postgres_database("prefect_bench", POSTGRES_URL))
        s = Stack(directory, app_url, prefect_url, auth_string=f"operator:{secrets.token_urlsafe(24)}",
                  webhook_secret=secrets.token_urlsafe(48))
        (directory / "prefect-home").mkdir()

        port = free_port()
        server_env = prefect_server.server_environment({
            **clean_environ(),
            "PREFECT_HOME": str(directory / "prefect-home"),
            **({"PREFECT_SERVER_DATABASE_CONNECTION_URL": prefect_url.replace("postgresql://", "postgresql+asyncpg://", 1)}
               if prefect_url else {}),
            "PREFECT_SERVER_API_AUTH_STRING": s.auth_string,
        })
        server = s.start(stack, "server", prefect_server.command("127.0.0.1", port, ui=False), server_env)
        s.api_url = f"http://127.0.0.1:{port}/api"

        sim = s.start(stack, "simulator", [BROADCASTS, "simulator", "--port", "0"], clean_environ())
        s.simulator_url = sim.wait_for_line("listening on", 60).rsplit(" ", 1)[-1].strip()

        wait_for_http(f"{s.api_url}/health", server, 120, auth=s.auth_string)

        upgrade = subprocess.run([BROADCASTS, "db", "upgrade"], cwd=ROOT, capture_output=True, text=True,
                                 env={**clean_environ(), **s.app_environment()})
        if upgrade.returncode != 0:
            raise StackError(f"broadcasts db upgrade failed:\n{upgrade.stdout}{upgrade.stderr}")
        yield s, stack


class TreeMemory:
    """Peak resident memory of a process and all its descendants (sampled, summed), from /proc."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid, self.interval = pid, interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, self.sample())
            self._stop.wait(self.interval)

    def sample(self) -> int:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
        total, todo = 0, [self.pid]
        while todo:
            pid = todo.pop()
            todo.extend(children.get(pid, []))
            total += _status_kib(pid, "VmRSS")
        return total

    @property
    def peak_mib(self) -> float:
        return self.peak_kib / 1024


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0

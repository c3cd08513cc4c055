"""The high-availability topology of the README, on this machine, as separate processes:

    redis          a redis-server of its own on a free port (the fault suite restarts it; the
                   machine's Redis is shared)
    PostgreSQL     two throwaway databases: the app's and Prefect's
    api-a, api-b   `broadcasts server --no-services --redis-url …`, two API replicas
    services       `broadcasts server --services-only --redis-url …`
    dispatcher-1   `broadcasts serve --no-webhook` with PREFECT_API_URLS a,b
    dispatcher-2   the same with b,a
    webhook-1      `broadcasts webhook` with a,b
    webhook-2      the same with b,a
    simulator      the CBC proxy simulator

Each process runs in its own process group and is stopped, and both databases dropped, however
the caller ends. A part can be SIGKILLed (`kill`) and started again with the same settings
(`restart`), which is what the fault suite and `make ha-demo` do.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from broadcasts.settings import DEFAULT_MISSED_HEARTBEATS
from deployments import server as prefect_server
from tests.support.postgres import throwaway_postgres_database
from tests.support.prefect_server import SMALL_POOL
from tests.support.processes import (
    BROADCASTS, ROOT, Process, StackError, clean_environ, free_port, wait_for_http,
)

POSTGRES_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REPLICAS = ("api-a", "api-b")
DISPATCHERS = ("dispatcher-1", "dispatcher-2")
# Which replicas each client process lists, first choice first: each pair spread over both.
PREFERENCE = {"dispatcher-1": ("api-a", "api-b"), "webhook-1": ("api-a", "api-b"),
              "dispatcher-2": ("api-b", "api-a"), "webhook-2": ("api-b", "api-a")}


@dataclass
class _Spec:
    argv: list[str]
    env: dict[str, str]
    ready: str | None = None  # a line the process prints once it is ready
    health: str | None = None  # or a URL that answers 200 then


@dataclass
class HAStack:
    directory: Path
    app_database_url: str
    prefect_database_url: str
    auth_string: str = field(default_factory=lambda: f"operator:{secrets.token_urlsafe(24)}")
    webhook_secret: str = field(default_factory=lambda: secrets.token_urlsafe(48))
    redis_port: int = field(default_factory=free_port)
    api_urls: dict[str, str] = field(default_factory=dict)
    webhook_urls: dict[str, str] = field(default_factory=dict)
    simulator_url: str = ""
    # The dispatchers run resume in-process (a fresh process for each, 5 s of CPU here, had starved
    # the stack at 10 s): often, so that a recovery waits on the heartbeats, not on the schedule.
    resume_interval_seconds: float = 5
    missed_heartbeats: int = DEFAULT_MISSED_HEARTBEATS  # CRASHED_AFTER_MISSED_HEARTBEATS
    processes: dict[str, Process] = field(default_factory=dict)
    _specs: dict[str, _Spec] = field(default_factory=dict)

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def api_list(self, names: tuple[str, ...] = REPLICAS) -> str:
        return ",".join(self.api_urls[name] for name in names)

    def app_environment(self, replicas: tuple[str, ...] = REPLICAS) -> dict[str, str]:
        """What the service's processes read: production values, except the proxy endpoint (the
        simulator), dummy AWS credentials for it, a short resume interval, an hourly expiry
        and yearly link tests."""
        return {
            **clean_environ(),
            "DATABASE_URL": self.app_database_url,
            "CBC_PROXY_ENDPOINT_URL": self.simulator_url,
            "CBC_PROXY_FUNCTION_PREFIX": "",
            "ENABLED_CBCS": "ee,three,o2,vodafone",
            "AWS_ACCESS_KEY_ID": "ha", "AWS_SECRET_ACCESS_KEY": "ha",
            "PREFECT_API_URLS": self.api_list(replicas),
            "PREFECT_API_AUTH_STRING": self.auth_string,
            "PREFECT_HOME": str(self.directory / "prefect-home"),
            "WEBHOOK_SECRET": self.webhook_secret,
            "RESUME_INTERVAL_SECONDS": str(self.resume_interval_seconds),
            "CRASHED_AFTER_MISSED_HEARTBEATS": str(self.missed_heartbeats),
            # expire-broadcasts hourly, not every minute: this suite (alerts through failing
            # replicas) does not test it.
            "EXPIRY_INTERVAL_SECONDS": "3600",
            # Link tests once a year: a quarter-hour's link tests would call every route in the
            # middle of a test, taking its queued faults and rewriting the route advice.
            "LINK_TEST_CRON": "0 0 1 1 *",
        }

    def server_environment(self, **extra: str) -> dict[str, str]:
        return prefect_server.server_environment({
            **SMALL_POOL,
            **clean_environ(),
            "PREFECT_HOME": str(self.directory / "prefect-home"),
            "PREFECT_SERVER_DATABASE_CONNECTION_URL":
                self.prefect_database_url.replace("postgresql://", "postgresql+asyncpg://", 1),
            "PREFECT_SERVER_DATABASE_MIGRATE_ON_START": "false",  # migrated once, before any start
            "PREFECT_SERVER_API_AUTH_STRING": self.auth_string,
            **extra,
        }, self.redis_url)

    def _launch(self, stack: ExitStack | None, name: str, spec: _Spec, timeout: float = 120, after: int = 0) -> Process:
        self._specs[name] = spec
        process = Process.start(name, spec.argv, spec.env, self.directory)
        self.processes[name] = process
        if stack is not None:
            stack.callback(lambda: self.processes[name].stop())
        if spec.ready:
            process.wait_for_line(spec.ready, timeout, after=after)
        if spec.health:
            wait_for_http(spec.health, process, timeout, auth=self.auth_string)
        return process

    def kill(self, name: str) -> float:
        """SIGKILLs one part (its whole process group); returns the time.monotonic() of the kill."""
        self.processes[name].kill()
        return time.monotonic()

    def restart(self, name: str, timeout: float = 120) -> Process:
        """Starts a part again with the settings it had, once it is dead (it is killed first)."""
        if self.processes[name].alive():
            self.processes[name].kill()
        return self._launch(None, name, self._specs[name], timeout, after=len(self.processes[name].output()))

    def start_replica(self, stack: ExitStack, name: str, ui: bool = False) -> None:
        port = free_port()
        self.api_urls[name] = f"http://127.0.0.1:{port}/api"
        # Blocks are registered by the first replica only: two at once on a fresh database collide.
        extra = {} if name == REPLICAS[0] else {"PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false"}
        argv = [BROADCASTS, "server", "--port", str(port), "--no-services", "--redis-url", self.redis_url,
                *([] if ui else ["--no-ui"])]
        self._launch(stack, name, _Spec(argv, self.server_environment(**extra),
                                        health=f"{self.api_urls[name]}/health"))

    def start_dispatcher(self, stack: ExitStack, name: str) -> None:
        self._launch(stack, name, _Spec([BROADCASTS, "serve", "--no-webhook"],
                                        self.app_environment(PREFERENCE[name]), ready="serving:"), timeout=180)

    def start_webhook(self, stack: ExitStack, name: str) -> None:
        port = free_port()
        self.webhook_urls[name] = f"http://127.0.0.1:{port}"
        self._launch(stack, name, _Spec([BROADCASTS, "webhook", "--port", str(port)],
                                        self.app_environment(PREFERENCE[name]),
                                        health=f"{self.webhook_urls[name]}/healthz"))


def redis_argv(port: int) -> list[str]:
    # Nothing on disk, as the machine's Redis: a restart comes back empty.
    return ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]


@contextmanager
def running_ha_stack(ui: bool = False, directory: Path | None = None,
                     missed_heartbeats: int = DEFAULT_MISSED_HEARTBEATS) -> Iterator[HAStack]:
    """Every part of the topology started, in the order the README gives; all stopped at the end.
    Logs go to `directory` (emptied first), or to a temporary one. `missed_heartbeats`: how many
    a run may miss before it is marked Crashed (production's 3 unless a test wants it sooner)."""
    with ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="broadcasts-ha-")))
        else:
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
        app_url = stack.enter_context(throwaway_postgres_database("broadcasts_ha", POSTGRES_URL))
        prefect_url = stack.enter_context(throwaway_postgres_database("prefect_ha", POSTGRES_URL))
        ha = HAStack(directory, app_url, prefect_url, missed_heartbeats=missed_heartbeats)
        (directory / "prefect-home").mkdir()

        ha._launch(stack, "redis", _Spec(redis_argv(ha.redis_port), clean_environ(),
                                         ready="Ready to accept connections"))
        simulator = ha._launch(stack, "simulator", _Spec([BROADCASTS, "simulator", "--port", "0"], clean_environ(),
                                                         ready="listening on"))
        ha.simulator_url = simulator.wait_for_line("listening on", 5).rsplit(" ", 1)[-1].strip()

        migrate = subprocess.run([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
                                 cwd=ROOT, env=ha.server_environment(), capture_output=True, text=True)
        if migrate.returncode != 0:
            raise StackError(f"prefect server database upgrade failed:\n{migrate.stdout}{migrate.stderr}")
        for index, name in enumerate(REPLICAS):
            ha.start_replica(stack, name, ui=ui and index == 0)
        ha._launch(stack, "services", _Spec([BROADCASTS, "server", "--services-only", "--redis-url", ha.redis_url],
                                            ha.server_environment()))

        upgrade = subprocess.run([BROADCASTS, "db", "upgrade"], cwd=ROOT, capture_output=True, text=True,
                                 env=ha.app_environment())
        if upgrade.returncode != 0:
            raise StackError(f"broadcasts db upgrade failed:\n{upgrade.stdout}{upgrade.stderr}")
        # One at a time: the first bootstraps (limits, automations) and registers the deployments.
        for name in DISPATCHERS:
            ha.start_dispatcher(stack, name)
        for name in ("webhook-1", "webhook-2"):
            ha.start_webhook(stack, name)
        yield ha

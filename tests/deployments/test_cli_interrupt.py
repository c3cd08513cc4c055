"""`send-event` and `replay` without PREFECT_API_URL: a quiet temporary Prefect server that never
outlives the command, and Ctrl-C that ends the command at once and leaves a send to continue.

The console script runs as a subprocess in its own process group, like a job in a terminal."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, backend

BROADCASTS = str(Path(sys.executable).with_name("broadcasts"))
# The temporary server is the embedded default's; each test starts one (about a minute apiece).
pytestmark = [pytest.mark.skipif(backend() != "sqlite", reason="the embedded default (no PREFECT_API_URL): "
                                 "these run in the SQLite pass of `make test`"), pytest.mark.long(75)]
POLYGON = "51.5,-0.1 51.6,-0.1 51.6,0.0"
STARTED = re.compile(r"Starting temporary server on http://127\.0\.0\.1:(\d+)")


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One PREFECT_HOME for the module, so Prefect's own database is migrated once."""
    return tmp_path_factory.mktemp("prefect-home")


@pytest.fixture
def env(environment: dict[str, str], engine, prefect_home: Path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    values = {**os.environ, **environment, "PREFECT_HOME": str(prefect_home), "ENABLED_CBCS": "ee"}
    values.pop("PREFECT_API_URL", None)  # the command must start its own temporary server
    return values


def broadcasts(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BROADCASTS, *args], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=180)


def create_alert(env: dict[str, str]) -> str:
    created = broadcasts(env, "event", "create", "--type", "alert", "--body", "Flood warning",
                         "--polygon", POLYGON, "--finishes-in", "1h", "--providers", "ee", "--json")
    assert created.returncode == 0, created.stderr
    return json.loads(created.stdout)["broadcast_event_id"]


def ee_status(env: dict[str, str], event_id: str) -> dict:
    result = broadcasts(env, "status", event_id, "--json")
    assert result.returncode == 0, result.stderr
    return next((row for row in json.loads(result.stdout) if row["provider"] == "ee"), {})


def assert_closed(port: int) -> None:
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, f"the temporary server still listens on {port}"


def test_send_event_on_a_temporary_server_logs_no_error_and_stops_the_server(env, sim):
    event_id = create_alert(env)
    result = broadcasts(env, "send-event", event_id)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "ERROR" not in output and "Traceback" not in output, output
    port = STARTED.search(result.stderr)
    assert port, result.stderr
    assert_closed(int(port.group(1)))


@pytest.mark.parametrize("command", ["send-event", "replay"])
def test_ctrl_c_while_a_provider_is_retried_exits_130_at_once_and_a_rerun_continues(env, sim, command, tmp_path):
    event_id = create_alert(env)
    args = [event_id] if command == "send-event" else [event_id, "ee"]
    for route in ("ee-1-proxy", "ee-2-proxy"):
        sim.fault(route, http_status=500)  # no `times`: fails for ever
    # The production schedule's long waits (the first one 30 s here): Ctrl-C must not wait them out.
    slow = {**env, "BROADCAST_RETRY_DELAY_SCALE": "30"}
    log = tmp_path / "stderr.log"  # a file, not a pipe: nobody reads a pipe while the test polls
    with open(log, "w") as stderr_file:
        process = subprocess.Popen([BROADCASTS, command, *args], cwd=PROJECT_ROOT, env=slow,
                                   stdout=subprocess.DEVNULL, stderr=stderr_file, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not any(h["status"] == "returned-error" for h in ee_status(env, event_id).get("history", [])):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no failed attempt was recorded:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        identifier = ee_status(env, event_id)["identifier"]

        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground job
        interrupted = time.monotonic()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        took = time.monotonic() - interrupted
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    stderr = log.read_text()

    assert process.returncode == 130, stderr
    assert took < 10, f"took {took:.1f} s to stop"
    assert "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith("interrupted: "), stderr
    assert sum("interrupted" in line for line in stderr.splitlines()) == 1, stderr
    assert_closed(int(STARTED.search(stderr).group(1)))  # type: ignore[union-attr]
    with pytest.raises(ProcessLookupError):
        os.killpg(process.pid, 0)  # nothing of the job is left running
    assert ee_status(env, event_id)["status"] in ("sending", "returned-error")

    sim.reset()  # the proxies answer again
    rerun = broadcasts(env, command, *args)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    after = ee_status(env, event_id)
    assert (after["status"], after["identifier"]) == ("returned-ack", identifier)

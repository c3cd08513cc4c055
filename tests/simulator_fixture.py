"""Pytest plugin: the CBC proxy simulator as a real subprocess, and a boto3 client pointed at it.

List it in the top-level conftest (`pytest_plugins = ["tests.simulator_fixture"]`). Fixtures:

- `simulator` (session): one `python -m simulator` process for the whole run; yields a
  `SimulatorClient` (`.url`, `.reset()`, `.invocations(function=None)`, `.fault(function, **kw)`,
  `.faults()`, `.health()`); the process is terminated at session end.
- `sim` (function): the same client, reset before the test so it starts with no records and no
  faults.
- `lambda_client` (session): an unmodified boto3 Lambda client for `simulator`, with SDK retries
  off, a 2 s connect timeout and a 3 s read timeout. It does not reset; ask for `sim` too.
- `make_payload` (function): `build_payload`, valid docs/behaviour.md §3 payloads written out by hand.

`start_simulator(prefix=...)` starts an extra process (e.g. with a function-name prefix); use it
as a context manager.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LISTENING_MESSAGE = "CBC proxy simulator listening on "  # printed by simulator.app.run
START_TIMEOUT_SECONDS = 20.0


class SimulatorClient:
    """Talks to the simulator's `/_simulator/*` control endpoints."""

    def __init__(self, url: str) -> None:
        self.url = url

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/_simulator/health")

    def reset(self) -> None:
        self._request("POST", "/_simulator/reset")

    def invocations(self, function: str | None = None) -> list[dict[str, Any]]:
        """Every recorded invocation (optionally of one function), in arrival order."""
        query = f"?{urllib.parse.urlencode({'function': function})}" if function else ""
        return self._request("GET", f"/_simulator/invocations{query}")

    def fault(self, function: str, **options: Any) -> dict[str, Any]:
        """Queue a fault, e.g. `fault("ee-1-proxy", http_status=500, times=2)`.

        Raises AssertionError with the simulator's reasons when it rejects the fault.
        """
        return self._request("POST", "/_simulator/faults", {"function": function, **options})

    def faults(self) -> dict[str, list[dict[str, Any]]]:
        return self._request("GET", "/_simulator/faults")

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            raise AssertionError(
                f"simulator {method} {path} answered {error.code}: {error.read().decode()}"
            ) from None


class SimulatorProcess:
    """A `python -m simulator` subprocess, started and waited for until it listens."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.output: list[str] = []
        self._listening = threading.Event()
        self.url = ""
        self.process = subprocess.Popen(
            [sys.executable, "-m", "simulator", "--port", "0", "--prefix", prefix],
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # Keep draining the pipe for the life of the process so it can never block on a write.
        threading.Thread(target=self._read_output, daemon=True).start()

    def _read_output(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            if line.startswith(LISTENING_MESSAGE) and not self._listening.is_set():
                self.url = line[len(LISTENING_MESSAGE) :].strip()
                self._listening.set()
        self._listening.set()  # the process ended: stop waiting

    def wait_until_listening(self, timeout: float = START_TIMEOUT_SECONDS) -> str:
        if not self._listening.wait(timeout) or not self.url:
            self.stop()
            pytest.fail(
                f"simulator did not print {LISTENING_MESSAGE!r} within {timeout:g} s "
                f"(exit code {self.process.poll()}); output:\n{''.join(self.output)}"
            )
        return self.url

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


@contextlib.contextmanager
def start_simulator(prefix: str = "") -> Iterator[SimulatorClient]:
    """A simulator subprocess with `prefix`, stopped on exit."""
    process = SimulatorProcess(prefix)
    try:
        yield SimulatorClient(process.wait_until_listening())
    finally:
        process.stop()


def make_lambda_client(url: str) -> Any:
    """A boto3 Lambda client for the simulator at `url`: one HTTP attempt, short timeouts."""
    import boto3
    import botocore.config

    return boto3.client(
        "lambda",
        endpoint_url=url,
        region_name="eu-west-2",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=botocore.config.Config(
            retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=3
        ),
    )


@pytest.fixture(scope="session")
def simulator() -> Iterator[SimulatorClient]:
    with start_simulator(prefix="") as client:
        yield client


@pytest.fixture
def sim(simulator: SimulatorClient) -> SimulatorClient:
    simulator.reset()
    return simulator


@pytest.fixture(scope="session")
def lambda_client(simulator: SimulatorClient) -> Any:
    return make_lambda_client(simulator.url)


SENT = "2026-11-27T10:00:00-00:00"
EXPIRES = "2026-11-27T12:00:00-00:00"
EARLIER_SENT = "2026-11-27T09:00:00-00:00"
TRIANGLE = [[51.5, -0.1], [51.6, -0.1], [51.6, 0.0]]


def build_payload(message_type: str = "alert", fmt: str = "cap", **overrides: Any) -> dict:
    """A valid docs/behaviour.md §3 payload of `message_type` for format `fmt` ("cap" or "ibag").

    Written out literally, not by the product, so simulator tests do not trust the code under
    test. `overrides` replace or add keys.
    """
    ibag = fmt == "ibag"
    payload: dict[str, Any] = {
        "message_type": message_type,
        "identifier": "6f1c2b9e-3a41-4c55-9d0e-2b7a8c1d4e5f",
        "message_format": fmt,
    }
    if message_type in ("alert", "update"):
        payload.update(
            headline="GOV.UK Notify Broadcast",
            description="Flood warning",
            areas=[{"polygon": TRIANGLE}],
            sent=SENT,
            expires=EXPIRES,
            language="English" if ibag else "en-GB",
            channel="severe",
        )
    if message_type in ("update", "cancel"):
        reference = {"message_id": "0a3e5d2c-8b1f-4e6a-9c7d-1f2e3d4c5b6a", "sent": EARLIER_SENT}
        if ibag:
            reference["message_number"] = "0000004e"
        payload["references"] = [reference]
    if message_type == "cancel":
        payload["sent"] = SENT
    if ibag:
        payload["message_number"] = "0000007b"
    payload.update(overrides)
    return payload


@pytest.fixture
def make_payload() -> Any:
    """`make_payload(message_type="alert", fmt="cap", **overrides)` -> a valid payload."""
    return build_payload

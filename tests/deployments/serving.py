"""Run `broadcasts serve` as a subprocess against the test Prefect server, and start and wait for
deployment runs as the webhook and the UI do."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect.client.orchestration import get_client

from flows.send_broadcast_event import DEPLOYMENT_NAME as SEND_EVENT_DEPLOYMENT, idempotency_key
from tests.conftest import PROJECT_ROOT

BROADCASTS = [sys.executable, "-m", "deployments.cli"]


class Served:
    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.output: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            if line.startswith("serving:"):
                self.ready.set()
        self.ready.set()

    def text(self) -> str:
        return "".join(self.output)


@contextmanager
def serving(*extra: str, webhook: bool = False) -> Iterator[Served]:
    process = subprocess.Popen([*BROADCASTS, "serve", *([] if webhook else ["--no-webhook"]), *extra], cwd=PROJECT_ROOT,
                               env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    served = Served(process)
    try:
        assert served.ready.wait(120) and process.poll() is None, served.text()
        yield served
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def start_run(event_id: Any, deployment: str = SEND_EVENT_DEPLOYMENT, **parameters: Any) -> str:
    """A run of the deployment, as the webhook (send-broadcast-event, one per event) or the UI's
    "Custom run" (any deployment and parameters) creates it."""
    key = idempotency_key(event_id) if deployment == SEND_EVENT_DEPLOYMENT else None
    with get_client(sync_client=True) as client:
        found = client.read_deployment_by_name(deployment)
        return str(client.create_flow_run_from_deployment(
            found.id, parameters={"broadcast_event_id": str(event_id), **parameters}, idempotency_key=key).id)


def wait_for_runs(run_ids: list[str], timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            states = {run_id: client.read_flow_run(run_id).state for run_id in run_ids}
            if all(s.is_final() for s in states.values()) or time.monotonic() > deadline:
                return {run_id: s.type.value for run_id, s in states.items()}
            time.sleep(0.5)



"""Processes started for a stack: each in its own process group with its log in a file, stopped
(the whole group) however the caller ends."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BROADCASTS = str(Path(sys.executable).parent / "broadcasts")


class StackError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_environ() -> dict[str, str]:
    """This environment without any setting a stack chooses itself."""
    own = ("PREFECT_", "DATABASE_URL", "CBC_", "ENABLED_CBCS", "BROADCAST_", "WEBHOOK_SECRET", "AWS_", "RESUME_", "CRASHED_")
    return {k: v for k, v in os.environ.items() if not k.startswith(own)}


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path

    @classmethod
    def start(cls, name: str, argv: list[str], env: dict[str, str], directory: Path) -> "Process":
        log = directory / f"{name}.log"
        with open(log, "a") as output:
            popen = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return cls(name, popen, log)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_for_line(self, starts: str, timeout: float, after: int = 0) -> str:
        """The first line containing `starts` past the first `after` characters of the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.output()[after:].splitlines():
                if starts in line:
                    return line
            if self.popen.poll() is not None:
                break
            time.sleep(0.1)
        raise StackError(f"{self.name} did not print {starts!r}:\n{self.output()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL to the whole group, as a machine losing the process would."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(10)

    def stop(self) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
            except ProcessLookupError:
                pass
        else:  # the leader exited: its children may not have
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def wait_for_http(url: str, process: Process, timeout: float, auth: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            break
        request = urllib.request.Request(url)
        if auth:
            request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(0.2)
    raise StackError(f"{process.name} did not answer {url}:\n{process.output()[-3000:]}")

"""Waiting for something the system under test does in its own time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest


def eventually(condition: Callable[[], Any], timeout: float, every: float = 0.05) -> Any:
    """Polls `condition` until it is truthy or `timeout` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while not (found := condition()) and time.monotonic() < deadline:
        time.sleep(every)
    return found


def wait_until(condition: Callable[[], Any], timeout: float, what: str,
               explain: Callable[[], str] | None = None, every: float = 0.2) -> Any:
    """`eventually`, but a test failure naming `what` (and what `explain` says) when it times out;
    returns the condition's value."""
    found = eventually(condition, timeout, every)
    if not found:
        pytest.fail(f"waited {timeout:g} s for {what}" + (f"\n{explain()}" if explain else ""))
    return found

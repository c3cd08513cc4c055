"""Every end-to-end test must leave every provider's concurrency slot free."""

from __future__ import annotations

import time

import pytest
from prefect.client.orchestration import get_client


def occupied_slots() -> dict[str, int]:
    with get_client(sync_client=True) as client:
        return {c.name: c.active_slots for c in client.read_global_concurrency_limits(limit=50) if c.active_slots}


@pytest.fixture(autouse=True)
def slots_are_released(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    yield
    if "prefect_server" not in request.fixturenames:
        return
    deadline = time.monotonic() + 5  # a release may still be in flight from a finishing thread
    while occupied_slots() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert occupied_slots() == {}, "a provider concurrency slot was left occupied"

"""Every end-to-end test must leave every provider's slot free."""

from __future__ import annotations

import pytest

from tests.support.polling import eventually
from tests.support.slots import held_slots


@pytest.fixture(autouse=True)
def slots_are_released(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    yield
    if "prefect_server" not in request.fixturenames or "engine" not in request.fixturenames:
        return
    engine = request.getfixturevalue("engine")
    # A send records its outcome before it gives its slot back: a moment after the run ends.
    eventually(lambda: not held_slots(engine), 5, every=0.1)
    assert held_slots(engine) == [], "a provider slot was left taken"

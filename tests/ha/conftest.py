"""The HA stack for the fault suite: started once for the module (about 45 s); a test that
faults a part starts it again before it ends. A run is marked Crashed after 2 missed heartbeats
(60 s) instead of production's 3: the two tests that wait for it are the suite's longest."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.ha_stack import HAStack, running_ha_stack


@pytest.fixture(scope="module")
def ha() -> Iterator[HAStack]:
    with running_ha_stack(missed_heartbeats=2) as stack:
        yield stack

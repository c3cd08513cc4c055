"""The HA stack for the fault suite: started once for the module (about 45 s); a test that
faults a part starts it again before it ends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.ha_stack import HAStack, running_ha_stack


@pytest.fixture(scope="module")
def ha() -> Iterator[HAStack]:
    with running_ha_stack() as stack:
        yield stack

"""The per-provider global concurrency limits `cbc-<provider>`: a mutex around each proxy call.

Limit 1 stops two sends to one network overlapping. It is not an ordering tool (waiters are not
served in order; ordering is SPEC §4 rule 5) and it is held only while the proxy is called, never
while a retry waits, or one failing alert would hold back every other alert for that network.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists

# The shortest lease the server accepts; a crashed holder frees the slot when it runs out.
LEASE_SECONDS = 60

_ensured: set[str] = set()
_ensured_lock = threading.Lock()


def limit_name(provider: str) -> str:
    return f"cbc-{provider}"


def ensure_limits(providers: Iterable[str]) -> None:
    """Creates any missing limit (limit 1), once per process."""
    with _ensured_lock:
        missing = [limit_name(p) for p in providers if limit_name(p) not in _ensured]
        if not missing:
            return
        with get_client(sync_client=True) as client:
            for name in missing:
                try:
                    client.upsert_global_concurrency_limit_by_name(name, limit=1)
                except ObjectAlreadyExists:  # another process created it first
                    pass
                _ensured.add(name)


def provider_slot(provider: str):  # type: ignore[no-untyped-def]
    """The context manager that holds the provider's slot; strict, so a missing limit is an error
    rather than a silent free-for-all."""
    return concurrency(
        limit_name(provider),
        occupy=1,
        lease_duration=LEASE_SECONDS,
        strict=True,
        raise_on_lease_renewal_failure=False,
    )

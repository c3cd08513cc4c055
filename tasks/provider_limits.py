"""The per-provider global concurrency limits `cbc-<provider>`: a mutex around each proxy call.

Limit 1 stops two sends to one network overlapping. It is not an ordering tool (waiters are not
served in order; ordering is SPEC §4 rule 5) and it is held only while the proxy is called, never
while a retry waits, or one failing alert would hold back every other alert for that network.

The slot is taken and released with the lease endpoints directly, on this thread's own client:
Prefect's `concurrency()` helper shares an event loop across flow runs in one process, and two
flow runs finishing together were seen to leave a slot occupied for good. A slot that cannot be
taken in time is `ProviderBusy` (retried like any transient failure), so a leaked slot delays a
send instead of stopping it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import httpx
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.exceptions import ObjectAlreadyExists

from broadcasts.errors import ProviderBusy

# The shortest lease the server accepts; a crashed holder frees the slot when it runs out.
LEASE_SECONDS = 60
# Waiters ask again at least this often (Prefect's own waiters back off to 10-30 s).
MAX_POLL_SECONDS = 0.5

logger = logging.getLogger(__name__)
_ensured: set[str] = set()
_ensured_lock = threading.Lock()


def limit_name(provider: str) -> str:
    return f"cbc-{provider}"


def ensure_limits(providers: Iterable[str]) -> None:
    """Creates any missing limit (limit 1), once per process. An unreachable API is
    `ProviderBusy`, retried like any transient failure."""
    with _ensured_lock:
        missing = {p: limit_name(p) for p in providers if limit_name(p) not in _ensured}
        if not missing:
            return
        with get_client(sync_client=True) as client:
            for provider, name in missing.items():
                try:
                    client.upsert_global_concurrency_limit_by_name(name, limit=1)
                except ObjectAlreadyExists:  # another process created it first
                    pass
                except httpx.HTTPError as error:
                    raise ProviderBusy(provider, error) from error
                _ensured.add(name)


@contextmanager
def provider_slot(provider: str, timeout_seconds: float) -> Iterator[None]:
    """Holds the provider's slot (renewing its lease) for the body of the `with`."""
    name = limit_name(provider)
    with get_client(sync_client=True) as client:
        lease_id = _acquire(client, provider, name, timeout_seconds)
        released = threading.Event()
        renewer = threading.Thread(target=_renew, args=(client, lease_id, released), daemon=True)
        renewer.start()
        try:
            yield
        finally:
            released.set()
            renewer.join()
            try:
                client.release_concurrency_slots_with_lease(lease_id)
            except Exception:  # the send's outcome matters more; the lease expires on its own
                logger.warning("could not release %s lease %s; it expires in %s s", name, lease_id,
                               LEASE_SECONDS, exc_info=True)


def _acquire(client: SyncPrefectClient, provider: str, name: str, timeout_seconds: float) -> uuid.UUID:
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            response = client.increment_concurrency_slots_with_lease(
                names=[name], slots=1, mode="concurrency", lease_duration=LEASE_SECONDS
            )
        except httpx.HTTPStatusError as error:
            if error.response.status_code != 423:  # 423 Locked: the slot is taken
                raise ProviderBusy(provider, error) from error
            wait = float(error.response.headers.get("Retry-After", MAX_POLL_SECONDS))
        except httpx.HTTPError as error:
            raise ProviderBusy(provider, error) from error
        else:
            body = response.json()
            if not body.get("limits"):  # strict: a missing limit is not a free-for-all
                _ensured.discard(name)
                raise ProviderBusy(provider, f"the concurrency limit {name} does not exist")
            return uuid.UUID(body["lease_id"])
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ProviderBusy(provider, f"{name} still taken after {timeout_seconds:g} s")
        time.sleep(min(wait, MAX_POLL_SECONDS, remaining))


def _renew(client: SyncPrefectClient, lease_id: uuid.UUID, released: threading.Event) -> None:
    while not released.wait(LEASE_SECONDS / 3):
        try:
            client.renew_concurrency_lease(lease_id, lease_duration=LEASE_SECONDS)
        except Exception:
            logger.warning("could not renew lease %s", lease_id, exc_info=True)

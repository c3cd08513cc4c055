"""The per-provider global concurrency limits `cbc-<provider>`: a mutex around each proxy call.

Limit 1 stops two sends to one network overlapping. It is not an ordering tool (waiters are not
served in order; ordering is docs/behaviour.md §4 rule 5) and it is held only while the proxy is called, never
while a retry waits, or one failing alert would hold back every other alert for that network.

The slot is taken and released with the lease endpoints directly, on a synchronous client kept
for the process: Prefect's `concurrency()` helper shares an event loop across flow runs in one
process, and two flow runs finishing together were seen to leave a slot occupied for good; and a
new client per send cost a connection and about 40 ms before every proxy call. The release runs
in a thread of its own, so the send's result does not wait for it.

A slot must never keep an alert from a network. The wait for it is longer than any live holder
can hold it (the caller sets it: both routes timing out, plus a margin), so a slot still taken
after it belongs to nobody: a crashed holder whose lease was lost (the server's in-memory lease
store forgets leases when it restarts) or one far longer than ours. Then the send goes ahead
without it (the per-message lock and the ordering rule still stop a second or an out-of-order
send), logs an ERROR, emits the Prefect event `broadcast.provider.slot-stuck`, frees the stale
slot so the next send does not wait again, and tells the caller, which records it in the
attempt's history. An unreachable Prefect API is waited out the same way.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import httpx
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
from prefect.events import emit_event
from prefect.exceptions import MissingContextError, ObjectAlreadyExists, ObjectNotFound
from prefect.logging import get_run_logger
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY, PREFECT_API_URL

from broadcasts.settings import Settings

# The shortest lease the server accepts; a crashed holder frees the slot when it runs out.
LEASE_SECONDS = 60
# Waiters ask again at least this often (Prefect's own waiters back off to 10-30 s).
MAX_POLL_SECONDS = 0.5
SLOT_STUCK_EVENT = "broadcast.provider.slot-stuck"

logger = logging.getLogger(__name__)
_ensured: set[str] = set()
_ensured_lock = threading.Lock()
_clients: dict[tuple[object, ...], SyncPrefectClient] = {}
_clients_lock = threading.Lock()
_turns: defaultdict[str, _Turns] = defaultdict(lambda: _Turns())  # per limit, in this process


def slot_wait_seconds(settings: Settings) -> float:
    """Longer than any live call holds a slot: both routes timing out, plus a margin."""
    return 2 * (settings.cbc_proxy_connect_timeout + settings.cbc_proxy_read_timeout) + 10


def limit_name(provider: str) -> str:
    return f"cbc-{provider}"


def ensure_limits(providers: Iterable[str]) -> None:
    """Creates any missing limit (limit 1), once per process. An unreachable API is left to
    `provider_slot`, which waits it out like a taken slot."""
    with _ensured_lock:
        missing = {p: limit_name(p) for p in providers if limit_name(p) not in _ensured}
        if not missing:
            return
        with get_client(sync_client=True) as client:
            for name in missing.values():
                try:
                    client.upsert_global_concurrency_limit_by_name(name, limit=1)
                except ObjectAlreadyExists:  # another process created it first
                    pass
                except httpx.HTTPError:
                    logger.warning("could not create the concurrency limit %s", name, exc_info=True)
                    continue
                _ensured.add(name)


class _Turns:
    """The sends of this process to one network, in turn. The lease goes from one send straight
    to the next one waiting here: two fewer API calls per send when alerts queue for a network."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.busy = False
        self.waiting = 0
        self.lease_id: uuid.UUID | None = None  # handed on by the last holder

    def take(self, timeout: float) -> tuple[bool, uuid.UUID | None]:
        """(whether this send has its turn, the lease handed to it if any)."""
        with self.changed:
            self.waiting += 1
            mine = self.changed.wait_for(lambda: not self.busy, timeout)
            self.waiting -= 1
            if not mine:
                return False, None
            self.busy = True
            lease_id, self.lease_id = self.lease_id, None
            return True, lease_id

    def hand_on(self, lease_id: uuid.UUID) -> bool:
        """Gives the lease to the next send waiting here; False if none is."""
        with self.changed:
            if not self.waiting:
                return False
            self.lease_id, self.busy = lease_id, False
            self.changed.notify()
            return True

    def end(self) -> None:
        with self.changed:
            self.busy = False
            self.changed.notify()


@contextmanager
def provider_slot(provider: str, timeout_seconds: float) -> Iterator[str | None]:
    """Holds the provider's slot (renewing its lease) for the body of the `with` and yields None;
    or, when the slot stayed taken for `timeout_seconds`, yields why the body runs without it."""
    name = limit_name(provider)
    client = _client()
    deadline = time.monotonic() + timeout_seconds
    turns = _turns[name]
    my_turn, lease_id = turns.take(timeout_seconds)
    ended = not my_turn
    try:
        if lease_id is None:
            lease_id = _acquire(client, provider, name, max(0.0, deadline - time.monotonic()))
        if lease_id is None:
            yield _report_stuck(client, provider, name, timeout_seconds)
            return
        released = threading.Event()
        renewer = threading.Thread(target=_renew, args=(client, lease_id, released), daemon=True)
        renewer.start()
        try:
            yield None
        finally:
            released.set()
            if not (my_turn and turns.hand_on(lease_id)):
                # Not a daemon: a process that ends right after its send still gives the slot back.
                threading.Thread(target=_release, args=(client, name, lease_id, renewer, turns if my_turn else None),
                                 name=f"release {name}").start()
            ended = True
    finally:
        if not ended:
            turns.end()


def _client() -> SyncPrefectClient:
    """The process's client for the current API (tests and the CLI switch servers)."""
    key = (PREFECT_API_URL.value(), PREFECT_API_KEY.value(), PREFECT_API_AUTH_STRING.value())
    with _clients_lock:
        if key not in _clients:
            client = get_client(sync_client=True)
            client.__enter__()  # open for the life of the process
            _clients[key] = client
        return _clients[key]


def _release(client: SyncPrefectClient, name: str, lease_id: uuid.UUID, renewer: threading.Thread,
             turns: _Turns | None) -> None:
    renewer.join()
    try:
        client.release_concurrency_slots_with_lease(lease_id)
    except Exception:  # the send's outcome matters more; the lease expires on its own
        logger.warning("could not release %s lease %s; it expires in %s s", name, lease_id, LEASE_SECONDS,
                       exc_info=True)
    finally:
        if turns is not None:
            turns.end()  # only now: the next in turn finds the slot free


def _acquire(client: SyncPrefectClient, provider: str, name: str, timeout_seconds: float) -> uuid.UUID | None:
    """The lease id, or None if the slot could not be taken within `timeout_seconds`."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        wait = MAX_POLL_SECONDS
        try:
            response = client.increment_concurrency_slots_with_lease(
                names=[name], slots=1, mode="concurrency", lease_duration=LEASE_SECONDS
            )
        except httpx.HTTPStatusError as error:
            if error.response.status_code == 423:  # Locked: the slot is taken
                wait = float(error.response.headers.get("Retry-After", MAX_POLL_SECONDS))
            else:
                logger.warning("taking the %s slot: %s", name, error)
        except httpx.HTTPError as error:
            logger.warning("taking the %s slot: %s", name, error)
        else:
            body = response.json()
            if body.get("limits"):
                return uuid.UUID(body["lease_id"])
            # Strict: a missing limit is not a free-for-all. Create it and ask again.
            _ensured.discard(name)
            ensure_limits([provider])
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        time.sleep(min(wait, MAX_POLL_SECONDS, remaining))


def _report_stuck(client: SyncPrefectClient, provider: str, name: str, timeout_seconds: float) -> str:
    """Says loudly that the slot was stuck, and frees it so the next send need not wait."""
    try:
        limit = client.read_global_concurrency_limit_by_name(name)
        # The API names no lease for a global limit; the limit and its count are what it shows.
        held = f"{limit.active_slots} of {limit.limit} slot(s) held by a lease nobody released (limit id {limit.id})"
        client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=0))
        freed = "; the stale slot was freed"
    except (httpx.HTTPError, ObjectNotFound) as error:
        held, freed = f"the Prefect API did not answer ({error})", ""
    note = (f"{name} still taken after {timeout_seconds:g} s, longer than any live send holds it: "
            f"{held}; sent without the slot{freed}")
    _run_logger().error("%s", note)
    try:
        emit_event(
            event=SLOT_STUCK_EVENT,
            resource={"prefect.resource.id": f"broadcasts.provider.{provider}", "prefect.resource.name": provider},
            payload={"limit": name, "detail": note},
        )
    except Exception:  # the send matters more than the page
        logger.warning("could not emit %s", SLOT_STUCK_EVENT, exc_info=True)
    return note


def _run_logger() -> logging.Logger | logging.LoggerAdapter:  # type: ignore[type-arg]
    """The task run's logger (shown with the run in the UI), or this module's outside a run."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logger


def _renew(client: SyncPrefectClient, lease_id: uuid.UUID, released: threading.Event) -> None:
    while not released.wait(LEASE_SECONDS / 3):
        try:
            client.renew_concurrency_lease(lease_id, lease_duration=LEASE_SECONDS)
        except Exception:
            logger.warning("could not renew lease %s", lease_id, exc_info=True)

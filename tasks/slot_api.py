"""The Prefect calls behind the provider slot (tasks/provider_limits.py): each one short, and none
raising into a send.

Prefect's shared client retries a failed call 5 times with growing pauses and waits 60 s for each
answer: with the API refusing connections that cost about 4 min per send, and about 14 min when
it accepted connections and never answered, before the proxy was even called. This client makes
one attempt per call (no Prefect retries, no connection retries) and waits at most
`CALL_TIMEOUT_SECONDS`; the slot's own wait is the only retry loop.

Every failure on the Prefect side (no connection, a timeout, a 5xx, a body that is not the JSON
expected, such as a proxy's HTML page) comes back as `Unanswered`, never as an exception: the
caller treats it as transient, and when it lasts sends without the slot.

The holder record: Prefect's API does not show a waiter who holds a global limit, or whether that
holder still renews its lease. So the holder writes its lease id and process into the Prefect
variable `cbc-<provider>-holder` when it takes the slot and each time it renews; a waiter that
sees the record change knows the slot is moving, and a record that stays the same is a holder
that has stopped.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

import httpcore
import httpx
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate, VariableCreate
from prefect.context import SettingsContext, get_settings_context
from prefect.exceptions import ObjectAlreadyExists
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY, PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES

# Prefect answers these calls in milliseconds; a server that takes longer is as good as down.
CALL_TIMEOUT_SECONDS = 2.0
# Except the take: a take the server granted but whose answer came too late holds the slot with
# a lease nobody knows until it expires (LEASE_SECONDS, plus the server's sweep), which held a
# network back for 60 s when API replicas answered slowly under a burst. Waiting longer for
# that one answer costs nothing when it comes, and a connection refused still fails at once.
# (Never past the waiter's own bound: `take(wait=...)`.)
TAKE_TIMEOUT_SECONDS = 10.0
LEASE_SECONDS = 60  # the shortest lease the server accepts

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Taken:
    lease_id: uuid.UUID


@dataclass(frozen=True)
class Locked:
    """The slot is taken; ask again after `retry_after` seconds (the server's hint)."""

    retry_after: float


@dataclass(frozen=True)
class Missing:
    """The limit does not exist (the server then grants nothing: create it and ask again)."""


@dataclass(frozen=True)
class Unanswered:
    reason: str


class _Gone:
    """The server answered 410: it has no such lease."""


Answer = Taken | Locked | Missing | Unanswered


def holder_record_name(provider: str) -> str:
    return f"cbc-{provider}-holder"


class SlotApi:
    """One process's short-call client for one Prefect API. `outage_seen_at` is when a waiter
    last gave up because the API did not answer (monotonic); None once it answers again."""

    def __init__(self) -> None:
        context = get_settings_context()
        self._profile = context.profile
        self._settings = context.settings.copy_with_update(updates={PREFECT_CLIENT_MAX_RETRIES: 0})
        client = get_client(httpx_settings={"timeout": httpx.Timeout(CALL_TIMEOUT_SECONDS)}, sync_client=True)
        _no_connection_retries(client)
        client.__enter__()  # open for the life of the process
        self._client: SyncPrefectClient = client
        self.outage_seen_at: float | None = None
        self.holder = f"{socket.gethostname()}:{os.getpid()}"

    def take(self, name: str, wait: float = TAKE_TIMEOUT_SECONDS) -> Answer:
        """Asks for the slot, waiting up to `wait` s (at least CALL_TIMEOUT_SECONDS) for the answer."""
        read = max(CALL_TIMEOUT_SECONDS, min(wait, TAKE_TIMEOUT_SECONDS))
        timeout = httpx.Timeout(read, connect=CALL_TIMEOUT_SECONDS)

        def call(client: SyncPrefectClient) -> Taken | Missing:
            body = client.request("POST", "/v2/concurrency_limits/increment-with-lease", timeout=timeout, json={
                "names": [name], "slots": 1, "mode": "concurrency", "lease_duration": LEASE_SECONDS}).json()
            return Taken(uuid.UUID(body["lease_id"])) if body.get("limits") else Missing()

        answer = self._call(call, locked_ok=True)
        assert not isinstance(answer, _Gone)
        if isinstance(answer, Unanswered) and "Timeout" in answer.reason:
            logger.warning("taking %s: no answer within %g s; if the server took the slot, it stays taken "
                           "until its lease expires (%s s)", name, read, LEASE_SECONDS)
        return answer

    def renew(self, lease_id: uuid.UUID) -> bool | None:
        """True if renewed, False if the server no longer has the lease, None without an answer."""
        answer = self._call(lambda c: c.renew_concurrency_lease(lease_id, lease_duration=LEASE_SECONDS), gone_ok=True)
        return None if isinstance(answer, Unanswered) else not isinstance(answer, _Gone)

    def release(self, lease_id: uuid.UUID) -> Unanswered | None:
        answer = self._call(lambda c: c.release_concurrency_slots_with_lease(lease_id))
        return answer if isinstance(answer, Unanswered) else None

    def ensure_limit(self, name: str) -> Unanswered | None:
        def upsert(client: SyncPrefectClient) -> None:
            try:
                client.upsert_global_concurrency_limit_by_name(name, limit=1)
            except ObjectAlreadyExists:  # another process created it first
                pass

        answer = self._call(upsert)
        return answer if isinstance(answer, Unanswered) else None

    def reset(self, name: str) -> Unanswered | None:
        """Sets the limit's count of taken slots to 0 (a slot no lease holds cannot be released)."""
        answer = self._call(lambda c: c.update_global_concurrency_limit(
            name, GlobalConcurrencyLimitUpdate(active_slots=0)))
        return answer if isinstance(answer, Unanswered) else None

    def run_state(self, run_id: uuid.UUID) -> Any:
        """The flow run's state type (None if it has no state), or `Unanswered`: the cancel check
        before a retry (tasks/run_cancel.py) must not hold a send through an outage either."""
        return self._call(lambda c: getattr(c.read_flow_run(run_id).state, "type", None))

    def read_holder(self, provider: str) -> Any:
        """The holder record's value (None if there is none), or `Unanswered`."""
        return self._call(lambda c: getattr(c.read_variable_by_name(holder_record_name(provider)), "value", None))

    def write_holder(self, provider: str, lease_id: uuid.UUID) -> None:
        """Records that this process holds `lease_id` now; a failure is logged (the record is a
        sign of life for waiters, and the next renewal writes it again)."""
        name = holder_record_name(provider)
        value = {"lease_id": str(lease_id), "holder": self.holder,
                 "written_at": datetime.now(timezone.utc).isoformat()}

        def write(client: SyncPrefectClient) -> None:
            try:
                client.request("PATCH", "/variables/name/{name}", path_params={"name": name}, json={"value": value})
            except httpx.HTTPStatusError as error:
                if error.response.status_code != 404:
                    raise
                try:
                    client.create_variable(VariableCreate(name=name, value=value))
                except ObjectAlreadyExists:  # another holder created it meanwhile
                    client.request("PATCH", "/variables/name/{name}", path_params={"name": name},
                                   json={"value": value})

        answer = self._call(write)
        if isinstance(answer, Unanswered):
            logger.warning("could not write %s: %s", name, answer.reason)

    def _call(self, call: Callable[[SyncPrefectClient], T], *, locked_ok: bool = False,
              gone_ok: bool = False) -> T | Locked | Unanswered | _Gone:
        try:
            with self._context():
                result = call(self._client)
        except httpx.HTTPStatusError as error:
            status = error.response.status_code
            if locked_ok and status == 423:
                self._answered()
                return Locked(_retry_after(error.response))
            if gone_ok and status == 410:
                self._answered()
                return _Gone()
            return Unanswered(f"HTTP {status} from {error.request.url.path}")
        except Exception as error:  # any failure on the Prefect side is transient for the slot
            return Unanswered(f"{type(error).__name__}: {error}"[:300])
        self._answered()
        return result

    def _context(self) -> SettingsContext:
        return SettingsContext(profile=self._profile, settings=self._settings)

    def note_outage(self) -> None:
        self.outage_seen_at = time.monotonic()

    def _answered(self) -> None:
        self.outage_seen_at = None


_apis: dict[tuple[object, ...], SlotApi] = {}
_apis_lock = threading.Lock()


def current_api() -> SlotApi:
    """The process's slot client for the current API (tests and the CLI switch servers)."""
    key = (PREFECT_API_URL.value(), PREFECT_API_KEY.value(), PREFECT_API_AUTH_STRING.value())
    with _apis_lock:
        if key not in _apis:
            _apis[key] = SlotApi()
        return _apis[key]


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return 0.0


def _no_connection_retries(client: SyncPrefectClient) -> None:
    """Prefect sets its connection pool to retry a failed connection 3 times, with pauses; the
    slot makes one attempt per call. Done the way Prefect sets it (its client offers no option);
    should the pool's shape change, the retries stay, which costs time, not correctness."""
    transport_for_url = getattr(client._client, "_transport_for_url", None)
    if callable(transport_for_url):
        transport = transport_for_url(client._client.base_url)
        pool = getattr(transport, "_pool", None)
        if isinstance(transport, httpx.HTTPTransport) and isinstance(pool, httpcore.ConnectionPool):
            pool._retries = 0

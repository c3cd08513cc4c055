"""A flow run's state, read in one short call that never raises: the cancel check before a
provider send's retry (tasks/run_cancel.py) must not hold a send through a Prefect outage.

Prefect's shared client retries a failed call 5 times with growing pauses and waits 60 s for each
answer: with the API refusing connections that cost about 4 min per check, and about 14 min when
it accepted connections and never answered. This client makes one attempt per call (no Prefect
retries, no connection retries), waits at most `CALL_TIMEOUT_SECONDS`, and is kept for the life of
the process (a new client per call cost a connection and about 40 ms).

Every failure on the Prefect side (no connection, a timeout, a 5xx, a body that is not the JSON
expected, such as a proxy's HTML page) comes back as `Unanswered`, never as an exception.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.context import SettingsContext, get_settings_context
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY, PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES

# Prefect answers this call in milliseconds; a server that takes longer is as good as down.
CALL_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class Unanswered:
    reason: str


class RunStateApi:
    """One process's short-call client for one Prefect API."""

    def __init__(self) -> None:
        context = get_settings_context()
        self._profile = context.profile
        self._settings = context.settings.copy_with_update(updates={PREFECT_CLIENT_MAX_RETRIES: 0})
        client = get_client(httpx_settings={"timeout": httpx.Timeout(CALL_TIMEOUT_SECONDS)}, sync_client=True)
        _no_connection_retries(client)
        client.__enter__()  # open for the life of the process
        self._client: SyncPrefectClient = client

    def run_state(self, run_id: uuid.UUID) -> Any:
        """The flow run's state type (None if it has no state), or `Unanswered`."""
        try:
            with SettingsContext(profile=self._profile, settings=self._settings):
                return getattr(self._client.read_flow_run(run_id).state, "type", None)
        except httpx.HTTPStatusError as error:
            return Unanswered(f"HTTP {error.response.status_code} from {error.request.url.path}")
        except Exception as error:  # any failure on the Prefect side is transient here
            return Unanswered(f"{type(error).__name__}: {error}"[:300])


_apis: dict[tuple[object, ...], RunStateApi] = {}
_apis_lock = threading.Lock()


def current_api() -> RunStateApi:
    """The process's client for the current API (tests and the CLI switch servers)."""
    key = (PREFECT_API_URL.value(), PREFECT_API_KEY.value(), PREFECT_API_AUTH_STRING.value())
    with _apis_lock:
        if key not in _apis:
            _apis[key] = RunStateApi()
        return _apis[key]


def _no_connection_retries(client: SyncPrefectClient) -> None:
    """Prefect sets its connection pool to retry a failed connection 3 times, with pauses; this
    client makes one attempt per call. Done the way Prefect sets it (its client offers no option);
    should the pool's shape change, the retries stay, which costs time, not correctness."""
    transport_for_url = getattr(client._client, "_transport_for_url", None)
    if callable(transport_for_url):
        transport = transport_for_url(client._client.base_url)
        pool = getattr(transport, "_pool", None)
        if isinstance(transport, httpx.HTTPTransport) and isinstance(pool, httpcore.ConnectionPool):
            pool._retries = 0

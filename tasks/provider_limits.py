"""The per-provider global concurrency limits `cbc-<provider>`: a mutex around each proxy call.
(On a SQLite app database, where every sender is on one machine, the mutex is a file lock
instead: `slot_for`, tasks/provider_file_slot.py.)

Limit 1 stops two sends to one network overlapping. It is not an ordering tool (waiters are not
served in order; ordering is docs/behaviour.md §4 rule 5) and it is held only while the proxy is called, never
while a retry waits, or one failing alert would hold back every other alert for that network.

The slot is taken and released with the lease endpoints directly, on a client kept for the
process (tasks/slot_api.py, which also keeps every call short and never raises): Prefect's
`concurrency()` helper shares an event loop across flow runs in one process, and two flow runs
finishing together were seen to leave a slot occupied for good; and a new client per send cost a
connection and about 40 ms before every proxy call. The release runs in a thread of its own, so
the send's result does not wait for it, and asks again while the API is away until the lease
would have expired anyway. How a lease is taken, kept, given back and freed is tasks/slot_lease.py;
this module decides when.

A slot must never keep an alert from a network, and stuck is judged per holder, never by how
long a waiter has waited: three sends queued behind a slow network made the third give up, free
the slot while a live lease held it, and page. Each holder writes its holder record (tasks/slot_api.py)
when it takes the slot, and renews its lease and rewrites the record every `beat` seconds (tasks/slot_lease.py), so
while the slot is moving the record changes. A waiter gives up only when the record has not
changed for `timeout_seconds` (the caller sets it longer than any live call holds the slot: both
routes timing out, plus a margin), or when the Prefect API has not answered for that long. The
holder is then gone: crashed, with a lease that runs out later or that the server forgot (its
in-memory lease store forgets leases when it restarts, leaving the slot taken for good), or not
one of ours. The send goes ahead without the slot (the per-message lock and the ordering rule
still stop a second or an out-of-order send), logs an ERROR, emits the Prefect event
`broadcast.provider.slot-stuck` and tells the caller, which records it in the attempt's history;
a thread frees the stale slot: it releases the recorded lease if the server still has it, and
otherwise sets the limit's count to 0.

The sends of one process to one network take turns (tasks/slot_turns.py), and the lease goes
from one to the next without the server while the chain is short; a longer one goes back to the
server and this process's next send waits `FAIR_PAUSE_SECONDS` (tasks/slot_lease.py), a little longer than a waiter's
poll, so a waiter in another process finds the slot free.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from prefect.events import emit_event
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from sqlalchemy.engine import make_url

from broadcasts.providers import PROVIDERS
from broadcasts.settings import Settings
from tasks import slot_api, slot_lease
from tasks.provider_file_slot import file_slot, slot_directory
from tasks.slot_api import Locked, SlotApi, Unanswered
from tasks.slot_turns import HandOn, Turns

SLOT_STUCK_EVENT = "broadcast.provider.slot-stuck"

logger = logging.getLogger(__name__)
_ensured: set[str] = set()
_ensured_lock = threading.Lock()
_turns: defaultdict[str, Turns] = defaultdict(Turns)  # per limit, in this process


def slot_wait_seconds(settings: Settings) -> float:
    """Longer than any live call holds a slot: every route of an attempt timing out (four routes,
    or two for networks without a second CBC), plus a margin."""
    routes = max((len(PROVIDERS[p].routes(second_cbc=p in settings.cbc_b_providers)) for p in settings.enabled_cbcs),
                 default=2)
    return routes * (settings.cbc_proxy_connect_timeout + settings.cbc_proxy_read_timeout) + 10


def limit_name(provider: str) -> str:
    return f"cbc-{provider}"


def ensure_limits(providers: Iterable[str]) -> None:
    """Creates any missing limit (limit 1), once per process. An unreachable API is left to
    `provider_slot`, which waits it out like a taken slot."""
    with _ensured_lock:
        missing = [limit_name(p) for p in providers if limit_name(p) not in _ensured]
        if not missing:
            return
        api = slot_api.current_api()
        for name in missing:
            failed = api.ensure_limit(name)
            if failed is not None:
                logger.warning("could not create the concurrency limit %s: %s", name, failed.reason)
                continue
            _ensured.add(name)


def _recreate(provider: str) -> None:
    """The limit is missing (deleted, or a new server): make it again, strict as before."""
    with _ensured_lock:
        _ensured.discard(limit_name(provider))
    ensure_limits([provider])


@contextmanager
def provider_slot(provider: str, timeout_seconds: float) -> Iterator[str | None]:
    """Holds the provider's slot (renewing its lease) for the body of the `with` and yields None;
    or yields why the body runs without it: the slot stayed taken with no sign of life from its
    holder, or the Prefect API did not answer, for `timeout_seconds`. Nothing on the Prefect side
    raises out of it."""
    name = limit_name(provider)
    api = slot_api.current_api()
    turns = _turns[name]
    turn, lease_id = turns.take(timeout_seconds)
    ended = False
    try:
        if lease_id is None:
            taken = slot_lease.acquire(api, name, provider, timeout_seconds, lambda: _recreate(provider))
            if isinstance(taken, slot_lease.GaveUp):
                yield _report_stuck(api, provider, taken, timeout_seconds)
                return
            lease_id = taken
            turns.took_from_server()
        stop = threading.Event()
        keeper = threading.Thread(target=slot_lease.keep, args=(api, name, provider, lease_id, timeout_seconds, stop),
                                  name=f"keep {name}", daemon=True)
        keeper.start()
        try:
            yield None
        finally:
            stop.set()
            handed = turns.hand_on(turn, lease_id)
            if handed is not HandOn.HANDED:
                pause = slot_lease.FAIR_PAUSE_SECONDS if handed is HandOn.CHAIN_DONE else 0.0
                # Not a daemon: a process that ends right after its send still gives the slot back.
                threading.Thread(target=slot_lease.release, args=(api, name, lease_id, keeper, turns, turn, pause),
                                 name=f"release {name}").start()
            ended = True
    finally:
        if not ended:
            turns.end(turn)


def slot_for(settings: Settings, provider: str, timeout_seconds: float) -> AbstractContextManager[str | None]:
    """The slot every send through `settings`' app database shares. On a SQLite file every sender
    runs on this machine: a file lock (tasks/provider_file_slot.py). Otherwise Prefect's global
    limit (`provider_slot`)."""
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        return _file_slot(slot_directory(url.database), provider, timeout_seconds)
    return provider_slot(provider, timeout_seconds)


@contextmanager
def _file_slot(directory: Path, provider: str, timeout_seconds: float) -> Iterator[str | None]:
    with file_slot(directory, provider, timeout_seconds) as note:
        if note is not None:
            _page(provider, note)
        yield note


def _report_stuck(api: SlotApi, provider: str, gave_up: slot_lease.GaveUp, timeout_seconds: float) -> str:
    """Says loudly that the send goes without the slot, and why; frees a stale slot."""
    name = limit_name(provider)
    if isinstance(gave_up.answer, Locked):
        note = (f"{name} still taken after {timeout_seconds:g} s with no sign of life from its holder "
                f"({slot_lease.describe(gave_up.record)}); sent without the slot; freeing the stale slot")
        threading.Thread(target=slot_lease.free, args=(api, name, provider, gave_up.record), name=f"free {name}").start()
    else:
        why = gave_up.answer.reason if isinstance(gave_up.answer, Unanswered) else "the limit could not be created"
        note = (f"{name} not taken: the Prefect API did not answer for {timeout_seconds:g} s ({why}); "
                "sent without the slot")
    _page(provider, note)
    return note


def _page(provider: str, note: str) -> None:
    name = limit_name(provider)
    _run_logger().error("%s", note)
    try:
        emit_event(
            event=SLOT_STUCK_EVENT,
            resource={"prefect.resource.id": f"broadcasts.provider.{provider}", "prefect.resource.name": provider},
            payload={"limit": name, "detail": note},
        )
    except Exception:  # the send matters more than the page
        logger.warning("could not emit %s", SLOT_STUCK_EVENT, exc_info=True)


def _run_logger() -> logging.Logger | logging.LoggerAdapter:  # type: ignore[type-arg]
    """The task run's logger (shown with the run in the UI), or this module's outside a run."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logger

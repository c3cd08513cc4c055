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
would have expired anyway.

A slot must never keep an alert from a network, and stuck is judged per holder, never by how
long a waiter has waited: three sends queued behind a slow network made the third give up, free
the slot while a live lease held it, and page. Each holder writes its holder record (tasks/slot_api.py)
when it takes the slot, and renews its lease and rewrites the record every `_beat` seconds, so
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
server and this process's next send waits `FAIR_PAUSE_SECONDS`, a little longer than a waiter's
poll, so a waiter in another process finds the slot free.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.events import emit_event
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from sqlalchemy.engine import make_url

from broadcasts.settings import Settings
from tasks import slot_api
from tasks.provider_file_slot import file_slot, slot_directory
from tasks.slot_api import LEASE_SECONDS, Answer, Locked, Missing, SlotApi, Taken, Unanswered
from tasks.slot_turns import HandOn, Turns

# Waiters ask again at least this often (Prefect's own waiters back off to 10-30 s), and no more
# often than the floor, whatever the server's Retry-After says.
MAX_POLL_SECONDS = 0.5
MIN_POLL_SECONDS = 0.05
FAIR_PAUSE_SECONDS = MAX_POLL_SECONDS + 0.2  # a waiter elsewhere asks at least once meanwhile
RELEASE_RETRY_SECONDS = 5.0  # a process that ends waits this long for its release; a daemon asks on
SLOT_STUCK_EVENT = "broadcast.provider.slot-stuck"

logger = logging.getLogger(__name__)
_ensured: set[str] = set()
_ensured_lock = threading.Lock()
_turns: defaultdict[str, Turns] = defaultdict(Turns)  # per limit, in this process


def slot_wait_seconds(settings: Settings) -> float:
    """Longer than any live call holds a slot: both routes timing out, plus a margin."""
    return 2 * (settings.cbc_proxy_connect_timeout + settings.cbc_proxy_read_timeout) + 10


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


@dataclass(frozen=True)
class _GaveUp:
    answer: Locked | Missing | Unanswered  # the last answer to asking for the slot
    record: Any  # the holder record last read


class _Patience:
    """A waiter's wait: `seconds` from its start or from the last sign that the slot is moving
    (the holder record changed). None left at once when the API does not answer and another
    waiter here gave up on it less than `seconds` ago with no answer since: during an outage
    only the first of a run of sends waits the whole time."""

    _UNSEEN = object()

    def __init__(self, seconds: float, api: SlotApi) -> None:
        self.seconds, self.api = seconds, api
        self.since = time.monotonic()
        self.record: Any = self._UNSEEN
        self.answered = True

    def saw(self, answer: Answer, record: Any = _UNSEEN) -> None:
        self.answered = not isinstance(answer, Unanswered)
        if record is not self._UNSEEN and record != self.record:
            if self.record is not self._UNSEEN:
                self.since = time.monotonic()
            self.record = record

    def left(self) -> float:
        now = time.monotonic()
        outage = self.api.outage_seen_at
        if not self.answered and outage is not None and now - outage < self.seconds:
            return 0.0
        return self.since + self.seconds - now


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
            taken = _acquire(api, provider, timeout_seconds)
            if isinstance(taken, _GaveUp):
                yield _report_stuck(api, provider, taken, timeout_seconds)
                return
            lease_id = taken
            turns.took_from_server()
        stop = threading.Event()
        keeper = threading.Thread(target=_keep, args=(api, provider, lease_id, timeout_seconds, stop),
                                  name=f"keep {name}", daemon=True)
        keeper.start()
        try:
            yield None
        finally:
            stop.set()
            handed = turns.hand_on(turn, lease_id)
            if handed is not HandOn.HANDED:
                pause = FAIR_PAUSE_SECONDS if handed is HandOn.CHAIN_DONE else 0.0
                # Not a daemon: a process that ends right after its send still gives the slot back.
                threading.Thread(target=_release, args=(api, name, lease_id, keeper, turns, turn, pause),
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


def _beat(timeout_seconds: float) -> float:
    """How often a holder renews and rewrites its record: well within the lease and the wait."""
    return min(LEASE_SECONDS / 3, timeout_seconds / 4)


def _acquire(api: SlotApi, provider: str, timeout_seconds: float) -> uuid.UUID | _GaveUp:
    name = limit_name(provider)
    patience = _Patience(timeout_seconds, api)
    while True:
        # A short wait for the answer during an outage already seen: the bound is not waited twice.
        answer = api.take(name, wait=0 if api.outage_seen_at is not None else patience.left())
        wait = MAX_POLL_SECONDS
        if isinstance(answer, Taken):
            return answer.lease_id
        if isinstance(answer, Locked):
            wait = answer.retry_after
            record = api.read_holder(provider)
            if isinstance(record, Unanswered):
                patience.saw(answer)
            else:
                patience.saw(answer, record)
        else:
            if isinstance(answer, Missing):  # strict: a missing limit is not a free-for-all
                _ensured.discard(name)
                ensure_limits([provider])
            elif patience.answered:  # once per outage, not twice a second
                logger.warning("taking the %s slot: %s", name, answer.reason)
            patience.saw(answer)
        left = patience.left()
        if left <= 0:
            if isinstance(answer, Unanswered):
                api.note_outage()
            return _GaveUp(answer, None if patience.record is _Patience._UNSEEN else patience.record)
        time.sleep(min(max(wait, MIN_POLL_SECONDS), MAX_POLL_SECONDS, left))


def _keep(api: SlotApi, provider: str, lease_id: uuid.UUID, timeout_seconds: float, stop: threading.Event) -> None:
    """Keeps the lease and the holder record fresh until `stop`, for at most `timeout_seconds`:
    no live call holds the slot longer, so a holder stuck in its body (a reply trickling in under
    the read timeout, say) then stops looking alive, and waiters free the slot."""
    api.write_holder(provider, lease_id)
    until = time.monotonic() + timeout_seconds
    while not stop.wait(_beat(timeout_seconds)):
        if time.monotonic() > until:
            logger.warning("the %s slot has been held for over %g s: no longer renewing lease %s",
                           limit_name(provider), timeout_seconds, lease_id)
            return
        if api.renew(lease_id) is False:
            logger.warning("the %s lease %s is gone (expired, or freed as stale)", limit_name(provider), lease_id)
        api.write_holder(provider, lease_id)


def _release(api: SlotApi, name: str, lease_id: uuid.UUID, keeper: threading.Thread, turns: Turns,
             turn: int, pause: float) -> None:
    keeper.join()  # its calls are short; a renewal after the release would only log
    expires = time.monotonic() + LEASE_SECONDS  # renewed at the latest now
    try:
        failed = api.release(lease_id)
        time.sleep(pause)
    finally:
        turns.end(turn)  # only now: the next in turn finds the slot free
    if failed is None:
        return
    # A lease left behind blocks the network until it expires, so ask until then: a Prefect API
    # restarting takes longer than RELEASE_RETRY_SECONDS under load. A release after the lease
    # expired frees nothing (the server has no such lease), so asking late is safe.
    failed = _release_before(api, lease_id, time.monotonic() + RELEASE_RETRY_SECONDS)
    if failed is None:
        return
    logger.warning("could not release %s lease %s yet (%s); asking again until it expires within %s s",
                   name, lease_id, failed.reason, LEASE_SECONDS)
    # A daemon: a process that ends now is not held up; its lease then expires on its own.
    threading.Thread(target=_release_late, args=(api, name, lease_id, expires),
                     name=f"release {name} late", daemon=True).start()


def _release_before(api: SlotApi, lease_id: uuid.UUID, deadline: float) -> Unanswered | None:
    failed: Unanswered | None = Unanswered("not asked")
    while failed is not None and time.monotonic() < deadline:
        time.sleep(MAX_POLL_SECONDS)
        failed = api.release(lease_id)
    return failed


def _release_late(api: SlotApi, name: str, lease_id: uuid.UUID, expires: float) -> None:
    failed = _release_before(api, lease_id, expires)
    if failed is None:
        logger.warning("released %s lease %s after the Prefect API came back", name, lease_id)
    else:  # the send's outcome matters more; the lease has expired meanwhile
        logger.warning("could not release %s lease %s (%s); it has expired", name, lease_id, failed.reason)


def _report_stuck(api: SlotApi, provider: str, gave_up: _GaveUp, timeout_seconds: float) -> str:
    """Says loudly that the send goes without the slot, and why; frees a stale slot."""
    name = limit_name(provider)
    if isinstance(gave_up.answer, Locked):
        note = (f"{name} still taken after {timeout_seconds:g} s with no sign of life from its holder "
                f"({_describe(gave_up.record)}); sent without the slot; freeing the stale slot")
        threading.Thread(target=_free, args=(api, provider, gave_up.record), name=f"free {name}").start()
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


def _describe(record: Any) -> str:
    if not isinstance(record, dict):
        return "no holder record"
    return (f"last holder record: lease {record.get('lease_id')} of {record.get('holder')}, "
            f"written {record.get('written_at')}")


def _free(api: SlotApi, provider: str, record: Any) -> None:
    """Releases the stopped holder's lease if the server still has it (so its expiry later cannot
    free a live holder's slot); otherwise no lease holds the slot, so sets the count to 0, unless
    a new holder has written its record since the waiter read it."""
    name = limit_name(provider)
    try:
        lease_id = uuid.UUID(str(record["lease_id"])) if isinstance(record, dict) else None
    except (KeyError, ValueError):
        lease_id = None
    exists = api.renew(lease_id) if lease_id is not None else False
    if exists is None:
        logger.warning("could not free %s: the Prefect API did not answer", name)
    elif exists:
        failed = api.release(lease_id)  # type: ignore[arg-type]
        logger.warning("%s %s lease %s of its stopped holder", "could not release" if failed else "released",
                       name, lease_id)
    elif api.read_holder(provider) != record:  # a new holder took the slot meanwhile: it is live
        logger.warning("not freeing %s: a new holder took it meanwhile", name)
    else:
        failed = api.reset(name)
        logger.warning("%s %s: no lease of ours holds its slot", "could not free" if failed else "freed", name)


def _run_logger() -> logging.Logger | logging.LoggerAdapter:  # type: ignore[type-arg]
    """The task run's logger (shown with the run in the UI), or this module's outside a run."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logger

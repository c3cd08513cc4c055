"""The lease plumbing behind a provider slot (tasks/provider_limits.py): taking a lease with
patience, keeping it and the holder record fresh, giving it back while the API may be away, and
freeing a slot whose holder has stopped. Every call goes through tasks/slot_api.py (short, never
raising)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tasks.slot_api import LEASE_SECONDS, Answer, Locked, Missing, SlotApi, Taken, Unanswered
from tasks.slot_turns import Turns

# Waiters ask again at least this often (Prefect's own waiters back off to 10-30 s), and no more
# often than the floor, whatever the server's Retry-After says.
MAX_POLL_SECONDS = 0.5
MIN_POLL_SECONDS = 0.05
FAIR_PAUSE_SECONDS = MAX_POLL_SECONDS + 0.2  # a waiter elsewhere asks at least once meanwhile
RELEASE_RETRY_SECONDS = 5.0  # a process that ends waits this long for its release; a daemon asks on

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GaveUp:
    answer: Locked | Missing | Unanswered  # the last answer to asking for the slot
    record: Any  # the holder record last read


class Patience:
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


def beat(timeout_seconds: float) -> float:
    """How often a holder renews and rewrites its record: well within the lease and the wait."""
    return min(LEASE_SECONDS / 3, timeout_seconds / 4)


def acquire(api: SlotApi, name: str, provider: str, timeout_seconds: float, recreate: Callable[[], None]
            ) -> uuid.UUID | GaveUp:
    """Takes limit `name`'s slot, waiting while its holder looks alive and the API answers, for
    at most `timeout_seconds` without a sign of either; `recreate` makes a missing limit again."""
    patience = Patience(timeout_seconds, api)
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
                recreate()
            elif patience.answered:  # once per outage, not twice a second
                logger.warning("taking the %s slot: %s", name, answer.reason)
            patience.saw(answer)
        left = patience.left()
        if left <= 0:
            if isinstance(answer, Unanswered):
                api.note_outage()
            return GaveUp(answer, None if patience.record is Patience._UNSEEN else patience.record)
        time.sleep(min(max(wait, MIN_POLL_SECONDS), MAX_POLL_SECONDS, left))


def keep(api: SlotApi, name: str, provider: str, lease_id: uuid.UUID, timeout_seconds: float,
         stop: threading.Event) -> None:
    """Keeps the lease and the holder record fresh until `stop`, for at most `timeout_seconds`:
    no live call holds the slot longer, so a holder stuck in its body (a reply trickling in under
    the read timeout, say) then stops looking alive, and waiters free the slot."""
    api.write_holder(provider, lease_id)
    until = time.monotonic() + timeout_seconds
    while not stop.wait(beat(timeout_seconds)):
        if time.monotonic() > until:
            logger.warning("the %s slot has been held for over %g s: no longer renewing lease %s",
                           name, timeout_seconds, lease_id)
            return
        if api.renew(lease_id) is False:
            logger.warning("the %s lease %s is gone (expired, or freed as stale)", name, lease_id)
        api.write_holder(provider, lease_id)


def release(api: SlotApi, name: str, lease_id: uuid.UUID, keeper: threading.Thread, turns: Turns,
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


def describe(record: Any) -> str:
    if not isinstance(record, dict):
        return "no holder record"
    return (f"last holder record: lease {record.get('lease_id')} of {record.get('holder')}, "
            f"written {record.get('written_at')}")


def free(api: SlotApi, name: str, provider: str, record: Any) -> None:
    """Releases the stopped holder's lease if the server still has it (so its expiry later cannot
    free a live holder's slot); otherwise no lease holds the slot, so sets the count to 0, unless
    a new holder has written its record since the waiter read it."""
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

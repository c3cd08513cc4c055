"""The provider slot on the SQLite app database: one `flock` per provider, beside the database.

Every process that sends through a SQLite app database runs on the machine that holds its file,
so a file lock is a mutex across all of them: taken and given back without a network call, and
gone when its holder dies (no lease to expire, nothing to free). Prefect's global limits
(tasks/provider_limits.py) cost several writes per send, and on the embedded default's Prefect
server (SQLite too) those writes queue behind each other and come back as 503s: the four sends of
one event reached their networks seconds apart.

The rule stays the one of docs/behaviour.md §4: held only around the proxy call, and a holder
that keeps it longer than `timeout_seconds` (alive but stuck in its call) does not keep an alert
from its network: the waiter sends without it, logs an ERROR and emits the slot-stuck event.
Stuck is judged per holder, not by how long the waiter has waited: each holder writes who it is
into the lock file, and a waiter that sees that change knows the slot is moving (three sends
queued behind a slow network must not make the third give up).
"""

from __future__ import annotations

import fcntl
import itertools
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

POLL_SECONDS = 0.005  # a free slot is taken within this; the holders' calls take milliseconds and up
_takes = itertools.count()


def slot_directory(database: str) -> Path:
    return Path(f"{database}.provider-slots")


@contextmanager
def file_slot(directory: Path, provider: str, timeout_seconds: float) -> Iterator[str | None]:
    """Holds the provider's lock for the body and yields None; or, when one holder kept it for
    `timeout_seconds`, yields why the body runs without it."""
    directory.mkdir(exist_ok=True)
    # flock belongs to the open file description: two threads of one process exclude each other too.
    descriptor = os.open(directory / f"{provider}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        since, holder = time.monotonic(), None
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                seen = os.pread(descriptor, 64, 0)
                if seen != holder:
                    if holder is not None:  # the slot moved: a live queue, not a stuck holder
                        since = time.monotonic()
                    holder = seen
                elif time.monotonic() - since >= timeout_seconds:
                    yield (f"the {provider} slot still held after {timeout_seconds:g} s by one live holder "
                           f"({seen.decode(errors='replace')}, {directory / provider}.lock); sent without the slot")
                    return
                time.sleep(POLL_SECONDS)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"pid {os.getpid()} take {next(_takes)}".encode(), 0)
        yield None
    finally:
        os.close(descriptor)  # also releases the lock

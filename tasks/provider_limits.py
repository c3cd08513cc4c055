"""The per-provider slot: a mutex around each proxy call, so no two sends to one network overlap.

It is not an ordering tool (waiters are not served in order; ordering is docs/behaviour.md §4
rule 5) and it is held only while the proxy is called, never while a retry waits, or one failing
alert would hold back every other alert for that network. It lives where every sender meets:

- a PostgreSQL app database: an advisory lock per network (broadcasts/provider_db_slot.py), shared by
  every process on every machine;
- a SQLite file: a file lock per network beside it (broadcasts/provider_file_slot.py), since every
  sender runs on the machine that holds the file;
- an in-memory SQLite database (one process): this process's turns (broadcasts/slot_turns.py).

Each is taken and given back without the Prefect API. Prefect's global concurrency limits
(`cbc-<provider>`) served as the slot before: three API calls per send (take, a holder record,
release), the take 80-280 ms when one event's four sends asked at once, so they were most of an
alert's latency; on Prefect's SQLite server the writes queued behind each other as 503s; and a
slot whose lease lived only in a restarted server or Redis stayed taken.

A slot must never keep an alert from a network: each kind dies with its holder (a closed
connection, an exited process), and a live holder that keeps it longer than `slot_wait_seconds`
(stuck in its call) is passed over. The send then goes ahead without the slot (the per-message
lock and the ordering rule still stop a second or an out-of-order send), logs an ERROR, emits the
Prefect event `broadcast.provider.slot-stuck` and tells the caller, which records it in the
attempt's history.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from prefect.events import emit_event
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from sqlalchemy.engine import make_url

from broadcasts.db import get_engine
from broadcasts.providers import PROVIDERS
from broadcasts.settings import Settings
from broadcasts.provider_db_slot import database_slot
from broadcasts.provider_file_slot import file_slot, slot_directory
from broadcasts.slot_turns import Turns

SLOT_STUCK_EVENT = "broadcast.provider.slot-stuck"

logger = logging.getLogger(__name__)
_process_turns: defaultdict[str, Turns] = defaultdict(Turns)  # per provider, for an in-memory database


def slot_wait_seconds(settings: Settings) -> float:
    """Longer than any live call holds a slot: every route of an attempt timing out (four routes,
    or two for networks without a second CBC), plus a margin."""
    routes = max((len(PROVIDERS[p].routes(second_cbc=p in settings.cbc_b_providers)) for p in settings.enabled_cbcs),
                 default=2)
    return routes * (settings.cbc_proxy_connect_timeout + settings.cbc_proxy_read_timeout) + 10


def slot_for(settings: Settings, provider: str, timeout_seconds: float) -> AbstractContextManager[str | None]:
    """The slot every send through `settings`' app database shares: yields None while held, or
    why the body runs without it (already logged and paged)."""
    url = make_url(settings.database_url)
    if url.get_backend_name() != "sqlite":
        return _paging(provider, database_slot(get_engine(settings.database_url), provider, timeout_seconds))
    if url.database in (None, "", ":memory:"):
        return _paging(provider, _process_slot(provider, timeout_seconds))
    return _paging(provider, file_slot(slot_directory(url.database), provider, timeout_seconds))


@contextmanager
def _paging(provider: str, slot: AbstractContextManager[str | None]) -> Iterator[str | None]:
    with slot as note:
        if note is not None:
            _page(provider, note)
        yield note


@contextmanager
def _process_slot(provider: str, timeout_seconds: float) -> Iterator[str | None]:
    turns = _process_turns[provider]
    turn = turns.take(timeout_seconds)
    try:
        yield None if turn.passed_over is None else (
            f"the {provider} slot still held after {turn.passed_over:.0f} s by a send in this process "
            "(stuck in its call); sent without the slot")
    finally:
        turns.end(turn)


def _page(provider: str, note: str) -> None:
    """Logs the ERROR now and emits the event in the background: a send already held back by a
    stuck slot must not also wait for a Prefect API that may be the reason (with none answering,
    emitting took seconds)."""
    _run_logger().error("%s", note)
    threading.Thread(target=contextvars.copy_context().run, args=(_emit, provider, note),
                     name=f"page {provider} slot stuck", daemon=True).start()


def _emit(provider: str, note: str) -> None:
    try:
        emit_event(
            event=SLOT_STUCK_EVENT,
            resource={"prefect.resource.id": f"broadcasts.provider.{provider}", "prefect.resource.name": provider},
            payload={"provider": provider, "detail": note},
        )
    except Exception:  # the send matters more than the page
        logger.warning("could not emit %s", SLOT_STUCK_EVENT, exc_info=True)


def _run_logger() -> logging.Logger | logging.LoggerAdapter:  # type: ignore[type-arg]
    """The task run's logger (shown with the run in the UI), or this module's outside a run."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logger

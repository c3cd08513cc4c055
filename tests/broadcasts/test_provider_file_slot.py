"""The provider slot on the SQLite app database (broadcasts/provider_file_slot.py): real file locks,
real threads and a real process that dies holding one. No Prefect server: none is involved."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time

from broadcasts.settings import Settings
from broadcasts.provider_file_slot import file_slot, slot_directory
from tasks.provider_limits import SLOT_STUCK_EVENT, slot_for
from tests.support.polling import wait_until

HOLD = """
import sys, time
from pathlib import Path
from broadcasts.provider_file_slot import file_slot
with file_slot(Path(sys.argv[1]), "ee", 5) as note:
    assert note is None
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_sender_waits_for_the_first_to_give_the_slot_back(tmp_path):
    order: list[str] = []
    first_in = threading.Event()

    def first() -> None:
        with file_slot(tmp_path, "ee", 5) as note:
            assert note is None
            order.append("first in")
            first_in.set()
            time.sleep(0.3)
            order.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    first_in.wait(5)
    with file_slot(tmp_path, "ee", 5) as note:
        order.append("second in")
    thread.join()
    assert note is None
    assert order == ["first in", "first out", "second in"]


def test_each_provider_has_its_own_slot(tmp_path):
    with file_slot(tmp_path, "ee", 5) as ee, file_slot(tmp_path, "o2", 0.1) as o2:
        assert ee is None and o2 is None


def test_a_holder_that_keeps_the_slot_past_the_bound_does_not_keep_the_send_back(tmp_path):
    with file_slot(tmp_path, "ee", 5):
        started = time.monotonic()
        with file_slot(tmp_path, "ee", 0.3) as note:
            waited = time.monotonic() - started
    assert note is not None and "still held after 0.3 s" in note and "sent without the slot" in note
    assert 0.3 <= waited < 2


def test_a_holder_killed_with_the_slot_frees_it_at_once(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with file_slot(tmp_path, "ee", 0.2) as note:
            assert note is not None  # a live holder keeps it
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        started = time.monotonic()
        with file_slot(tmp_path, "ee", 5) as note:
            assert note is None
        assert time.monotonic() - started < 1  # no lease to wait out
    finally:
        holder.kill()


def test_the_sqlite_app_database_uses_the_file_slot_and_pages_when_it_is_stuck(tmp_path, caplog):
    database = tmp_path / "broadcasts.db"
    settings = Settings(database_url=f"sqlite:///{database}")
    with slot_for(settings, "ee", 5) as note:
        assert note is None
        assert (slot_directory(str(database)) / "ee.lock").exists()
        with caplog.at_level(logging.ERROR, logger="tasks.provider_limits"):
            with slot_for(settings, "ee", 0.1) as stuck:
                pass
    assert stuck is not None
    assert any("sent without the slot" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


def test_an_in_memory_database_has_one_slot_per_process_that_pages_when_it_is_stuck(caplog, slot_pages):
    """sqlite:// lives in one process: the slot is that process's turns, held across threads."""
    settings = Settings(database_url="sqlite://")
    with slot_for(settings, "ee", 5) as note:
        assert note is None
        with caplog.at_level(logging.ERROR, logger="tasks.provider_limits"):
            begun = time.monotonic()
            stuck = in_thread_result(lambda: _enter(slot_for(settings, "ee", 0.3)))
    assert stuck is not None and "sent without the slot" in stuck
    assert time.monotonic() - begun >= 0.3
    assert any("sent without the slot" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    pages = wait_until(lambda: slot_pages, 5, "the slot-stuck page")
    assert [(p["event"], p["payload"]) for p in pages] == [(SLOT_STUCK_EVENT, {"provider": "ee", "detail": stuck})]
    with slot_for(settings, "ee", 0.3) as note:
        assert note is None


def _enter(slot):  # type: ignore[no-untyped-def]
    with slot as note:
        return note


def in_thread_result(target):  # type: ignore[no-untyped-def]
    result: list = []
    thread = threading.Thread(target=lambda: result.append(target()))
    thread.start()
    thread.join(10)
    return result[0]

"""The turns of one process's sends to a network (broadcasts/slot_turns.py), with real threads."""

from __future__ import annotations

import threading
import time

from broadcasts.slot_turns import Turn, Turns


def take_in_thread(turns: Turns, timeout: float) -> tuple[threading.Thread, list[Turn]]:
    taken: list[Turn] = []
    thread = threading.Thread(target=lambda: taken.append(turns.take(timeout)))
    thread.start()
    return thread, taken


def test_the_next_send_waits_while_a_turn_waits_for_a_holder_elsewhere_then_gives_it_the_bound():
    turns = Turns()
    head = turns.take(0.2)
    turns.waiting_elsewhere_for(head)
    thread, taken = take_in_thread(turns, 0.2)
    time.sleep(0.5)
    assert taken == [], "passed over while the turn before it held nothing yet"
    held_from = time.monotonic()  # before: the bound counts from the holding() below
    turns.holding(head)
    thread.join(5)
    assert taken and taken[0].passed_over is not None  # it held its turn past the bound: stuck
    assert time.monotonic() - held_from >= 0.2


def test_a_turn_ended_in_time_is_not_passed_over_and_a_late_end_does_not_end_the_next():
    turns = Turns()
    first = turns.take(5)
    thread, taken = take_in_thread(turns, 5)
    turns.end(first)
    thread.join(5)
    assert taken[0].passed_over is None and taken[0].number == first.number + 1
    turns.end(first)  # ended twice: the current turn is not the first's
    assert turns.busy

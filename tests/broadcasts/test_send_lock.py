"""The per-message lock can be lost with its PostgreSQL connection; the send's work under it runs on
that connection, before the proxy call and for its record after it, so a lost lock is found
there (docs/behaviour.md §4, step 5 of the attempt)."""

from __future__ import annotations

import logging
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from broadcasts import send_lock
from broadcasts.db import get_engine
from broadcasts.errors import SendLockLost
from tests.broadcasts.test_dispatch_records import first_status_write_failing, retried, send
from tests.factories import make_alert
from tests.flows.helpers import calls_for, in_thread, statuses



def _holders(engine: Engine, key: uuid.UUID) -> list[int]:
    """The backends holding the advisory lock of `key` in this database."""
    lock_id = int.from_bytes(key.bytes[:8], "big", signed=True)
    with engine.connect() as connection:
        return list(connection.scalars(text(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = CAST(:c AS oid) "
            "AND objid = CAST(:o AS oid) AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ), {"c": (lock_id >> 32) & 0xFFFFFFFF, "o": lock_id & 0xFFFFFFFF}))


def terminate_lock_holder(engine: Engine, key: uuid.UUID) -> None:
    """Ends the lock's connection from the server side, as a network drop or a DBA would."""
    pids = _holders(engine, key)
    assert pids, f"nobody holds the lock of {key}"
    with engine.connect() as connection:
        for pid in pids:
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        connection.commit()


def on_postgresql(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("only a PostgreSQL advisory lock lives on a connection")


def test_file_and_memory_locks_exclude_a_second_holder_and_work_on_a_pooled_connection(tmp_path: Path):
    key = uuid.uuid4()
    for engine in (create_engine("sqlite://"), get_engine(f"sqlite:///{tmp_path / 'locks.db'}")):
        with send_lock.exclusive(engine, key) as lock:
            assert lock
            with lock.transaction(engine) as session:
                assert session.scalar(text("SELECT 1")) == 1
            with send_lock.exclusive(engine, key) as other:
                assert not other
            assert not lock.lost
        with send_lock.exclusive(engine, key) as again:
            assert again


def test_an_advisory_lock_is_lost_with_its_connection_and_the_next_transaction_takes_another(engine):
    on_postgresql(engine)
    key = uuid.uuid4()
    with send_lock.exclusive(engine, key) as lock:
        with lock.transaction(engine) as session:  # on the lock's own connection
            assert session.scalar(text("SELECT pg_backend_pid()")) in _holders(engine, key)
        terminate_lock_holder(engine, key)
        with pytest.raises(OperationalError):
            with lock.transaction(engine) as session:
                session.scalar(text("SELECT 1"))
        assert lock.lost
        with lock.transaction(engine) as session:  # a pooled connection now
            assert session.scalar(text("SELECT pg_backend_pid()")) not in _holders(engine, key)
    with send_lock.exclusive(engine, key) as again:  # released with its connection; nothing raised
        assert again and _holders(engine, key)


def test_a_lock_lost_before_the_call_sends_nothing_and_is_retried(environment, engine, sim, monkeypatch):
    on_postgresql(engine)
    _, _, event_id = make_alert(engine)
    real_exclusive = send_lock.exclusive

    @contextmanager
    def taken_then_lost(engine_, key):  # type: ignore[no-untyped-def]
        with real_exclusive(engine_, key) as lock:
            terminate_lock_holder(engine, key)
            yield lock

    monkeypatch.setattr(send_lock, "exclusive", taken_then_lost)
    with pytest.raises(SendLockLost) as raised:
        send(engine, event_id)
    assert retried(raised.value)
    assert sim.invocations() == []
    assert statuses(engine, event_id)["ee"].status == "sending"
    monkeypatch.setattr(send_lock, "exclusive", real_exclusive)
    assert send(engine, event_id).status == "returned-ack"  # the retry


def test_a_lock_lost_during_the_call_still_records_the_outcome_and_says_so(environment, engine, sim, caplog):
    on_postgresql(engine)
    _, _, event_id = make_alert(engine)
    sim.fault("ee-1-proxy", delay_seconds=1.5, times=1)  # a slow answer
    results = []
    with caplog.at_level(logging.ERROR, logger="broadcasts.dispatch"):
        sending = in_thread(lambda: results.append(send(engine, event_id)))
        deadline = time.monotonic() + 10
        while not sim.invocations() and time.monotonic() < deadline:  # the call is in flight
            time.sleep(0.02)
        terminate_lock_holder(engine, statuses(engine, event_id)["ee"].identifier)
        sending.join(15)

    assert [r.status for r in results] == ["returned-ack"]
    ee = statuses(engine, event_id)["ee"]
    assert ee.status == "returned-ack" and len(calls_for(sim, ee.identifier)) == 1
    assert "lock was lost during the proxy call" in ee.history[-1].detail["lock_lost"]
    assert any(r.levelno == logging.ERROR and "lock was lost" in r.getMessage() for r in caplog.records)


def test_a_lock_connection_lost_as_a_plain_database_error_still_gets_the_outcome_recorded(
        environment, engine, sim):
    """psycopg2 reports some lost connections (an SSL EOF, say) as a DatabaseError, not an
    OperationalError: the answered call is still recorded, on another connection, as lost."""
    on_postgresql(engine)
    import psycopg2

    _, _, event_id = make_alert(engine)
    with first_status_write_failing(engine, psycopg2.DatabaseError("SSL SYSCALL error: EOF detected")) as failed:
        result = send(engine, event_id)
    assert failed and (result.status, result.sent_now) == ("returned-ack", True)
    ee = statuses(engine, event_id)["ee"]
    assert [h.status for h in ee.history] == ["sending", "returned-ack"]
    assert "lock was lost" in ee.history[-1].detail["lock_lost"]
    assert len(calls_for(sim, ee.identifier)) == 1

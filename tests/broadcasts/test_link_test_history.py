"""Link-test history per provider and route (docs/behaviour.md §5), on the test database.

Each test writes its rows in a transaction it rolls back, so it sees only its own rows and
leaves nothing for other tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from broadcasts.link_test_history import RouteHistory, link_test_history
from broadcasts.models import LinkTestResult, utcnow


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine) as session:
        session.begin()
        try:
            yield session
        finally:
            session.rollback()


@pytest.fixture
def start() -> datetime:
    return utcnow()


def add(session: Session, at: datetime, provider: str, route: str, ok: bool, error: str | None = None) -> None:
    function = f"{provider}-{route[6]}-proxy"
    detail = {"function": function, "latency_ms": 12}
    if error:
        detail["error"] = error
    session.add(LinkTestResult(provider=provider, route=route, identifier=uuid.uuid4(), message_number=None,
                               ok=ok, detail=detail, created_at=at))
    session.flush()


def test_pass_rate_last_result_and_consecutive_failures_per_route(session, start):
    at = [start + timedelta(seconds=s) for s in range(1, 6)]
    for moment, ok in zip(at, (True, False, True, False, False)):
        add(session, moment, "ee", "lambda2-cbc_b", ok, None if ok else f"HTTP 500 at {moment:%S}")
        add(session, moment, "ee", "lambda1-cbc_a", True)

    history = {(h.provider, h.route): h for h in link_test_history(session, since=start, provider="ee")}

    failover = history["ee", "lambda2-cbc_b"]
    assert (failover.runs, failover.passes, failover.consecutive_failures) == (5, 2, 2)
    assert failover.pass_rate == pytest.approx(0.4)
    assert failover.last_ok is False and failover.last_at == at[-1]
    assert failover.last_error == f"HTTP 500 at {at[-1]:%S}" and failover.last_failure_at == at[-1]
    primary = history["ee", "lambda1-cbc_a"]
    assert (primary.runs, primary.passes, primary.pass_rate, primary.consecutive_failures) == (5, 5, 1.0, 0)
    assert primary.last_ok is True and primary.last_error is None and primary.last_failure_at is None


def test_a_pass_after_failures_resets_the_run_of_failures_but_keeps_the_last_error(session, start):
    add(session, start + timedelta(seconds=1), "o2", "lambda1-cbc_a", False, "ReadTimeoutError: slow")
    add(session, start + timedelta(seconds=2), "o2", "lambda1-cbc_a", False, "HTTP 500 boom")
    add(session, start + timedelta(seconds=3), "o2", "lambda1-cbc_a", True)

    [o2] = link_test_history(session, since=start, provider="o2")

    assert (o2.runs, o2.passes, o2.consecutive_failures, o2.last_ok) == (3, 1, 0, True)
    assert o2.last_error == "HTTP 500 boom" and o2.last_failure_at == start + timedelta(seconds=2)


def test_only_results_since_the_given_time_count(session, start):
    add(session, start - timedelta(hours=1), "three", "lambda1-cbc_a", False, "old")
    add(session, start + timedelta(seconds=1), "three", "lambda1-cbc_a", True)

    [three] = link_test_history(session, since=start, provider="three")

    assert (three.runs, three.passes, three.consecutive_failures, three.last_error) == (1, 1, 0, None)


def test_every_provider_and_route_in_provider_order_then_route_name(session, start):
    moment = start + timedelta(seconds=1)
    for provider in ("vodafone", "o2", "ee"):
        for route in ("lambda2-cbc_b", "lambda1-cbc_a"):
            add(session, moment, provider, route, True)

    history = link_test_history(session, since=start, provider=None)

    assert [(h.provider, h.route) for h in history] == [
        ("ee", "lambda1-cbc_a"), ("ee", "lambda2-cbc_b"), ("o2", "lambda1-cbc_a"), ("o2", "lambda2-cbc_b"),
        ("vodafone", "lambda1-cbc_a"), ("vodafone", "lambda2-cbc_b"),
    ]
    assert all(isinstance(h, RouteHistory) for h in history)


def test_a_route_with_no_results_in_the_window_is_not_listed(session, start):
    assert link_test_history(session, since=start, provider="ee") == []


def test_as_row_is_a_flat_table_row(session, start):
    add(session, start + timedelta(seconds=1), "ee", "lambda1-cbc_a", False, "HTTP 500 boom")

    [ee] = link_test_history(session, since=start, provider="ee")

    assert ee.as_row() == {
        "provider": "ee", "route": "lambda1-cbc_a", "runs": 1, "passes": 0, "pass_rate": 0.0,
        "consecutive_failures": 1, "last_ok": False, "last_at": (start + timedelta(seconds=1)).isoformat(),
        "last_error": "HTTP 500 boom", "last_failure_at": (start + timedelta(seconds=1)).isoformat(),
    }


def test_an_unknown_provider_is_refused(session, start):
    from broadcasts.errors import UnknownProvider

    with pytest.raises(UnknownProvider):
        link_test_history(session, since=start, provider="nope")

"""The link-tests flow end to end (docs/behaviour.md §5): every route of every provider against the
simulator, recorded in `link_test_result`, sharing each provider's slot with real sends."""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import datetime

import pytest
from prefect.artifacts import Artifact
from sqlalchemy import select

from broadcasts.db import unit_of_work
from broadcasts.link_test_history import link_test_history
from broadcasts.models import LinkTestResult, utcnow
from flows.link_tests import FLOW_NAME, ROUTE_FAILING_EVENT, run_link_tests
from tests.factories import make_alert
from tests.flows.helpers import calls_for, in_thread, prefect_events, run_event

pytestmark = pytest.mark.usefixtures("prefect_server", "engine")  # engine: the migrated test database
ALL = ("ee", "three", "o2", "vodafone")
COLUMNS = ["provider", "route", "ok", "latency_ms", "error"]
ROUTES = ("lambda1-cbc_a", "lambda1-cbc_b", "lambda2-cbc_a", "lambda2-cbc_b")


def route_of(call) -> str:  # type: ignore[no-untyped-def]
    """`lambda2-cbc_b` for a call of `ee-2-proxy` with cbc_target `cbc_b`."""
    return f"lambda{call['function'].split('-')[1]}-{call['payload']['cbc_target']}"


def stored(engine, identifiers) -> dict[str, LinkTestResult]:
    """The link_test_result rows of these identifiers, by identifier."""
    with unit_of_work(engine) as session:
        rows = session.scalars(select(LinkTestResult).where(
            LinkTestResult.identifier.in_([uuid.UUID(i) for i in identifiers]))).all()
    return {str(row.identifier): row for row in rows}


def at(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp)


def never_overlap(calls) -> None:  # type: ignore[no-untyped-def]
    calls = sorted(calls, key=lambda c: c["received_at"])
    for earlier, later in zip(calls, calls[1:]):
        assert at(later["received_at"]) >= at(earlier["responded_at"]), (
            f"{later['function']} was called while {earlier['function']} was in flight")


def test_the_flow_is_called_link_tests():
    assert FLOW_NAME == "link-tests"


@pytest.mark.sqlite
def test_every_route_of_every_enabled_provider_is_tested_once_and_recorded(configure, engine, sim):
    configure(ENABLED_CBCS="ee,three,o2,vodafone")
    state, rows = run_link_tests(None)

    assert state.is_completed(), state.message
    assert state.message == "16 routes ok"
    calls = sim.invocations()
    assert sorted((c["function"], c["payload"]["cbc_target"]) for c in calls) == sorted(
        (f"{p}-{n}-proxy", t) for p in ALL for n in (1, 2) for t in ("cbc_a", "cbc_b")), "4 routes × 4 networks"
    assert all(c["outcome"] == "ok" and c["payload"]["message_type"] == "test" for c in calls)
    identifiers = [c["payload"]["identifier"] for c in calls]
    assert len(set(identifiers)) == 16, "a fresh identifier per call"

    results = stored(engine, identifiers)
    assert len(results) == 16 and all(r.ok for r in results.values())
    for call in calls:
        result = results[call["payload"]["identifier"]]
        assert (result.provider, result.route, result.detail["function"], result.detail["cbc_target"]) == (
            call["function"].split("-")[0], route_of(call), call["function"], call["payload"]["cbc_target"])
        assert isinstance(result.detail["latency_ms"], int) and result.detail["latency_ms"] >= 0

    vodafone = sorted((r for r in results.values() if r.provider == "vodafone"), key=lambda r: r.id)
    numbers = [r.message_number for r in vodafone]
    assert len(numbers) == 4 and None not in numbers and len(set(numbers)) == 4
    for result in vodafone:
        [call] = calls_for(sim, result.identifier)
        assert call["payload"]["message_number"] == f"{result.message_number:08x}"
    assert all(r.message_number is None for r in results.values() if r.provider != "vodafone")

    assert [(r["provider"], r["route"]) for r in rows] == [(p, r) for p in ALL for r in ROUTES]
    assert all(list(r) == COLUMNS and r["ok"] is True and r["error"] is None for r in rows)
    artifact = Artifact.get("link-tests")
    assert artifact is not None and artifact.flow_run_id == state.state_details.flow_run_id
    assert json.loads(artifact.data) == rows


@pytest.mark.sqlite
def test_vodafone_numbers_increase_from_run_to_run(configure, engine, sim):
    configure(ENABLED_CBCS="vodafone")
    first, _ = run_link_tests(None)
    second, _ = run_link_tests(None)
    assert first.is_completed() and second.is_completed()
    calls = sim.invocations()
    numbers = [stored(engine, [c["payload"]["identifier"]]).popitem()[1].message_number for c in calls]
    assert len(calls) == 8 and max(numbers[:4]) < min(numbers[4:])


def test_a_failing_route_fails_the_run_naming_it_and_nothing_fails_over(configure, engine, sim, caplog):
    configure(ENABLED_CBCS="ee,three,o2,vodafone")
    sim.fault("ee-2-proxy", http_status=500, cbc_target="cbc_a", times=1)

    state, rows = run_link_tests(None)

    assert state.is_failed()
    assert state.message.startswith("link test failed: ee lambda2-cbc_a (ee-2-proxy: HTTP 500"), state.message
    assert "lambda1" not in state.message and "cbc_b" not in state.message
    calls = sim.invocations()
    assert len(calls) == 16, "one call per route: no failover, no retry"
    assert [route_of(c) for c in calls if c["function"] == "ee-2-proxy"].count("lambda2-cbc_a") == 1
    results = stored(engine, [c["payload"]["identifier"] for c in calls])
    assert len(results) == 16
    assert sorted((r.provider, r.route) for r in results.values() if not r.ok) == [("ee", "lambda2-cbc_a")]
    failed = [r for r in results.values() if not r.ok][0]
    assert "HTTP 500" in failed.detail["error"] and failed.detail["function"] == "ee-2-proxy"
    assert [(r["provider"], r["route"]) for r in rows if not r["ok"]] == [("ee", "lambda2-cbc_a")]
    assert sum(r["ok"] for r in rows) == 15
    assert any(r.levelno == logging.ERROR and "ee lambda2-cbc_a" in r.getMessage() and "HTTP 500" in r.getMessage()
               for r in caplog.records)


def test_only_the_providers_asked_for_are_tested(configure, sim):
    configure(ENABLED_CBCS="ee,three,o2,vodafone")
    state, rows = run_link_tests(["o2"])
    assert state.is_completed() and state.message == "4 routes ok"
    assert sorted(route_of(c) for c in sim.invocations()) == list(ROUTES)
    assert {c["function"].split("-")[0] for c in sim.invocations()} == {"o2"}
    assert [(r["provider"], r["route"]) for r in rows] == [("o2", r) for r in ROUTES]


def test_a_network_with_one_cbc_has_its_two_routes_tested(configure, sim):
    configure(ENABLED_CBCS="ee,three,o2,vodafone", CBC_B_PROVIDERS="ee,three,vodafone")
    state, rows = run_link_tests(["o2", "ee"])
    assert state.is_completed() and state.message == "6 routes ok"
    assert [(r["provider"], r["route"]) for r in rows] == [
        ("o2", "lambda1-cbc_a"), ("o2", "lambda2-cbc_a"), *(("ee", r) for r in ROUTES)]
    assert sorted(route_of(c) for c in sim.invocations() if c["function"].startswith("o2-")) == [
        "lambda1-cbc_a", "lambda2-cbc_a"]


def test_an_unknown_provider_fails_the_run_and_sends_nothing(configure, sim):
    state, rows = run_link_tests(["ee", "nokia"])
    assert state.is_failed()
    assert "nokia" in state.message and "unknown provider" in state.message.lower()
    assert rows == [] and sim.invocations() == []


def test_disabled_dispatch_sends_no_link_test(configure, sim):
    configure(CBC_PROXY_ENABLED="false")
    state, rows = run_link_tests(None)
    assert state.is_completed() and "disabled" in state.message
    assert rows == [] and sim.invocations() == []


def test_link_tests_of_one_provider_never_overlap_but_providers_run_in_parallel(configure, sim):
    configure(ENABLED_CBCS="ee,three,o2,vodafone")
    for provider in ALL:
        for n in (1, 2):
            sim.fault(f"{provider}-{n}-proxy", delay_seconds=0.4, times=1)

    state, _ = run_link_tests(None)

    assert state.is_completed(), state.message
    calls = sim.invocations()
    assert len(calls) == 16
    for provider in ALL:
        never_overlap([c for c in calls if c["function"].startswith(f"{provider}-")])
    first = [c for c in calls if c["function"].startswith("ee-")][0]
    overlapping = {c["function"].split("-")[0] for c in calls
                   if at(c["received_at"]) < at(first["responded_at"]) and at(c["responded_at"]) > at(first["received_at"])}
    assert len(overlapping) > 1, "the providers were tested one after another, not in parallel"


@pytest.mark.sqlite
def test_an_alert_waits_for_at_most_one_link_test_call_holding_the_slot(configure, engine, sim):
    configure(ENABLED_CBCS="ee,three,o2,vodafone")
    sim.fault("ee-1-proxy", delay_seconds=1.5, times=1)
    link_run = in_thread(lambda: run_link_tests(["ee"]))
    deadline = time.monotonic() + 15
    while not sim.invocations("ee-1-proxy") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sim.invocations("ee-1-proxy"), "the link test never called ee"

    _, _, event_id = make_alert(engine, providers=["ee"])
    asked = utcnow()
    state = run_event(event_id)
    link_run.join(30)

    assert state.is_completed(), state.message
    ee_calls = [c for c in sim.invocations() if c["function"].startswith("ee-")]
    # The delayed call, in flight when the alert was asked for (the link test's other routes may
    # have been called before it).
    link_call = sim.invocations("ee-1-proxy")[0]
    assert link_call["payload"]["message_type"] == "test"
    # On whichever route a link test just passed on: the route advisor puts it first.
    alert_call = next(c for c in ee_calls if c["payload"]["message_type"] == "alert")
    answered = at(link_call["responded_at"])
    assert asked < answered, "the alert was asked for only after the link test's call had finished"
    assert at(alert_call["received_at"]) >= answered, "the alert reached ee while a link test was in flight"
    waited = (at(alert_call["received_at"]) - answered).total_seconds()
    assert waited < 2, f"the alert reached ee {waited:.2f} s after the link test's call was answered"
    never_overlap([c for c in sim.invocations() if c["function"].startswith("ee-")])


def test_history_of_stored_link_tests(configure, engine, sim):
    configure(ENABLED_CBCS="ee,three,o2,vodafone")
    start = utcnow()
    assert run_link_tests(["o2"])[0].is_completed()
    sim.fault("o2-2-proxy", http_status=500, cbc_target="cbc_b", times=2)
    assert run_link_tests(["o2"])[0].is_failed()
    assert run_link_tests(["o2"])[0].is_failed()

    with unit_of_work(engine) as session:
        *working, failing = link_test_history(session, since=start, provider="o2")

    assert [(h.route, h.runs, h.passes, h.pass_rate, h.consecutive_failures) for h in working] == [
        (route, 3, 3, 1.0, 0) for route in ROUTES[:3]]
    assert (failing.route, failing.runs, failing.passes, failing.consecutive_failures) == (
        "lambda2-cbc_b", 3, 1, 2)
    assert failing.pass_rate == pytest.approx(1 / 3)
    assert failing.last_ok is False and "HTTP 500" in failing.last_error


def test_a_route_whose_result_cannot_be_recorded_fails_the_run(configure, sim, tmp_path):
    configure(DATABASE_URL=f"sqlite:///{tmp_path}/missing/dir/db.sqlite")
    state, rows = run_link_tests(["ee"])
    assert state.is_failed()
    assert state.message.startswith("link test failed: ee lambda1-cbc_a (not tested: Failed:"), state.message
    assert [(r["provider"], r["route"], r["ok"], r["latency_ms"]) for r in rows] == [
        ("ee", route, False, None) for route in ROUTES]


def test_a_route_failing_three_runs_in_a_row_is_announced_for_the_operator(configure, engine, sim):
    configure(ENABLED_CBCS="ee,three,o2,vodafone")
    start = utcnow()
    sim.fault("three-2-proxy", http_status=500, cbc_target="cbc_b", times=3)
    for run in range(3):
        assert run_link_tests(["three"])[0].is_failed()
        if run < 2:
            assert prefect_events(ROUTE_FAILING_EVENT, start) == []  # twice is not yet "in a row"
    deadline = time.monotonic() + 10
    while not (announced := prefect_events(ROUTE_FAILING_EVENT, start)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [(e["payload"]["provider"], e["payload"]["route"], e["payload"]["consecutive_failures"])
            for e in announced] == [("three", "lambda2-cbc_b", 3)]
    assert "HTTP 500" in announced[0]["payload"]["message"]

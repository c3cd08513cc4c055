"""Four routes per network and the route advisor (docs/behaviour.md §3), against the simulator
over HTTP and the test database: a route down costs one failed call, once, and the route that
worked goes first for the next send while its advice is fresh."""

from __future__ import annotations

from datetime import timedelta

import pytest

from broadcasts import dispatch, route_advisor
from broadcasts.cbc_proxy import get_proxy
from broadcasts.db import unit_of_work
from broadcasts.errors import AllRoutesFailed
from broadcasts.link_tests import link_test_route
from broadcasts.models import RouteAdvice, utcnow
from broadcasts.providers import PROVIDERS
from broadcasts.settings import get_settings
from tests.factories import make_alert
from tests.flows.helpers import statuses

EE_ROUTES = PROVIDERS["ee"].routes(second_cbc=True)
ALL = ["ee", "three", "o2", "vodafone"]


def send(engine, event_id, provider="ee", **options):  # type: ignore[no-untyped-def]
    return dispatch.send_once(engine, get_proxy(get_settings()), event_id, provider, headline="h", enabled=ALL,
                              **options)


def calls(sim, function_prefix: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [f"{c['function']}/{c['payload']['cbc_target']}" for c in sim.invocations()
            if c["function"].startswith(function_prefix)]


def advice(engine, provider: str) -> tuple[str, str] | None:  # type: ignore[no-untyped-def]
    with unit_of_work(engine) as session:
        row = session.get(RouteAdvice, provider)
        return (row.lambda_name, row.target) if row else None


def test_the_first_route_down_is_acknowledged_on_the_next_in_one_attempt_then_advised_first(
        environment, engine, sim):
    sim.fault("ee-1-proxy", http_status=500, cbc_target="cbc_a")  # (lambda 1, cbc_a) down for good
    _, _, first = make_alert(engine)
    result = send(engine, first)
    assert (result.status, result.route) == ("returned-ack", "ee-1-proxy/cbc_b")
    [ack] = [h for h in statuses(engine, first)["ee"].history if h.status == "returned-ack"]
    assert (ack.attempt, ack.route) == (1, "ee-1-proxy/cbc_b")
    assert [f["cbc_target"] for f in ack.detail["failed_routes"]] == ["cbc_a"]
    assert advice(engine, "ee") == ("ee-1-proxy", "cbc_b")

    sim.reset()
    sim.fault("ee-1-proxy", http_status=500, cbc_target="cbc_a")
    _, _, second = make_alert(engine)
    assert send(engine, second).route == "ee-1-proxy/cbc_b"
    assert calls(sim, "ee-") == ["ee-1-proxy/cbc_b"]  # the advised route first: no failed call


def test_stale_advice_is_ignored_and_the_default_order_tried(environment, engine, sim):
    with unit_of_work(engine) as session:
        route_advisor.record_success(session, "ee", EE_ROUTES[3], utcnow() - timedelta(seconds=31))
    _, _, event_id = make_alert(engine)
    assert send(engine, event_id).route == "ee-1-proxy/cbc_a"
    assert calls(sim, "ee-") == ["ee-1-proxy/cbc_a"]
    assert advice(engine, "ee") == ("ee-1-proxy", "cbc_a")  # and the working route is the advice now


def test_route_advice_seconds_bounds_how_long_advice_is_trusted(environment, engine, sim):
    five_seconds_ago = utcnow() - timedelta(seconds=5)
    with unit_of_work(engine) as session:
        for provider in ("ee", "three"):
            route_advisor.record_success(session, provider, PROVIDERS[provider].routes(True)[2], five_seconds_ago)
    _, _, event_id = make_alert(engine)
    assert send(engine, event_id, route_advice_seconds=2).route == "ee-1-proxy/cbc_a"
    assert send(engine, event_id, provider="three", route_advice_seconds=10).route == "three-2-proxy/cbc_a"


def test_an_older_success_never_overwrites_a_newer_one(engine):
    now = utcnow()
    with unit_of_work(engine) as session:
        route_advisor.record_success(session, "three", PROVIDERS["three"].routes(True)[1], now)
    with unit_of_work(engine) as session:  # a send that started earlier and committed later
        route_advisor.record_success(session, "three", PROVIDERS["three"].routes(True)[2], now - timedelta(seconds=1))
    assert advice(engine, "three") == ("three-1-proxy", "cbc_b")


def test_every_route_failing_leaves_the_advice_and_names_all_four(environment, engine, sim):
    sim.fault("o2-1-proxy", http_status=500, times=2)
    sim.fault("o2-2-proxy", http_status=503, times=2)
    _, _, event_id = make_alert(engine)
    with pytest.raises(AllRoutesFailed) as raised:
        send(engine, event_id, provider="o2")
    message = str(raised.value)
    for route in ("o2-1-proxy/cbc_a", "o2-1-proxy/cbc_b", "o2-2-proxy/cbc_a", "o2-2-proxy/cbc_b"):
        assert route in message
    assert advice(engine, "o2") is None
    assert send(engine, event_id, provider="o2").route == "o2-1-proxy/cbc_a"


def test_a_network_with_one_cbc_has_two_routes_and_never_names_cbc_b(configure, engine, sim):
    configure(CBC_B_PROVIDERS="ee,three,vodafone")
    sim.fault("o2-1-proxy", http_status=500)
    _, _, event_id = make_alert(engine)
    assert send(engine, event_id, provider="o2").route == "o2-2-proxy/cbc_a"
    assert calls(sim, "o2-") == ["o2-1-proxy/cbc_a", "o2-2-proxy/cbc_a"]


def test_a_passed_link_test_refreshes_the_advice_and_a_failed_one_does_not(environment, engine, sim):
    proxy = get_proxy(get_settings())
    sim.fault("vodafone-2-proxy", http_status=500, cbc_target="cbc_a")
    assert link_test_route(engine, proxy, "vodafone", "lambda2-cbc_b").ok
    assert advice(engine, "vodafone") == ("vodafone-2-proxy", "cbc_b")
    assert not link_test_route(engine, proxy, "vodafone", "lambda2-cbc_a").ok
    assert advice(engine, "vodafone") == ("vodafone-2-proxy", "cbc_b")

"""Link tests (docs/behaviour.md §5): prove each route of each provider works, one call per route, no failover."""

from __future__ import annotations

import uuid

from sqlalchemy import Engine

from broadcasts import dao
from broadcasts.cbc_proxy import CBCProxy, LinkTestOutcome
from broadcasts.db import unit_of_work
from broadcasts.payloads import build_link_test_payload
from broadcasts.providers import get_provider

ROUTES = ("primary", "failover")  # the order of `Provider.routes`


def link_test_route(engine: Engine, proxy: CBCProxy, provider_name: str, route: str) -> LinkTestOutcome:
    """One link test on one route (`primary` or `failover`), recorded in `link_test_result`
    whatever the outcome: the row names the route, and its detail the proxy function."""
    provider = get_provider(provider_name)
    if route not in ROUTES:
        raise ValueError(f"route {route!r} is not one of {', '.join(ROUTES)}")
    identifier = uuid.uuid4()
    with unit_of_work(engine) as session:
        number = dao.next_message_number(session) if provider.numbered else None
    outcome = proxy.link_test(provider.routes[ROUTES.index(route)],
                              build_link_test_payload(provider, identifier, number))
    with unit_of_work(engine) as session:
        dao.record_link_test_result(
            session,
            provider=provider.name,
            route=route,
            identifier=identifier,
            message_number=number,
            ok=outcome.ok,
            detail={**outcome.detail, "function": outcome.function},
        )
    return outcome

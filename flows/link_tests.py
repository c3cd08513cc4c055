"""link-tests: prove every route of every provider works, one call per route, all in parallel.

Every route (proxy Lambda, CBC) is tested separately, with no failover between them (docs/behaviour.md §5).
Each call takes its provider's slot like a send, so it never overlaps a call to that network."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.events import emit_event
from prefect.futures import PrefectFuture
from prefect.states import Completed, Failed, State

from broadcasts.db import get_engine, unit_of_work
from broadcasts.errors import UnknownProvider
from broadcasts.link_test_history import link_test_history
from broadcasts.link_tests import RouteTestResult, providers_to_test, routes_of
from broadcasts.models import utcnow
from broadcasts.settings import get_settings
from tasks.link_test import link_test_route

FLOW_NAME = "link-tests"
ARTIFACT_KEY = "link-tests"
# Emitted (and paged on) when a route has failed this many link-test runs in a row.
ROUTE_FAILING_EVENT = "broadcast.link-test.route-failing"
FAILING_AFTER_RUNS = 3


@flow(name=FLOW_NAME)
def link_tests(providers: list[str] | None = None) -> State:
    """`providers`: the providers to test; None tests every enabled one (ENABLED_CBCS)."""
    logger = get_run_logger()
    settings = get_settings()
    if not settings.cbc_proxy_enabled:
        logger.info("CBC_PROXY_ENABLED is false: no link test is sent")
        return Completed(message="dispatch disabled: nothing sent", data=[])
    try:
        chosen = providers_to_test(providers, settings.enabled_cbcs)
    except UnknownProvider as error:
        return Failed(message=f"no link test run: {error}", data=[])

    names, routes = routes_of(chosen, settings.cbc_b_providers)
    futures = link_test_route.map(names, routes)
    results = [wait_for(name, route, future) for name, route, future in zip(names, routes, futures, strict=True)]
    rows = [result.as_row() for result in results]
    create_table_artifact(key=ARTIFACT_KEY, table=rows,
                          description=f"Link tests of {', '.join(chosen)}: one call per route")

    failed = [result.describe() for result in results if not result.ok]
    for failure in failed:
        logger.error("link test failed: %s", failure)
    try:
        announce_failing_routes(chosen)
    except Exception as error:  # the run's own result must still be reported
        logger.warning("could not read the link-test history: %s", error)
    if failed:
        return Failed(message=f"link test failed: {'; '.join(failed)}", data=rows)
    return Completed(message=f"{len(rows)} routes ok", data=rows)


def wait_for(provider: str, route: str, future: PrefectFuture[RouteTestResult]) -> RouteTestResult:
    """The route's result; a task that did not complete counts as a failed route."""
    future.wait()
    state = future.state
    if state.is_completed():
        return state.result()
    return RouteTestResult.not_tested(provider, route, f"not tested: {state.name}: {state.message or ''}")


def announce_failing_routes(providers: list[str]) -> None:
    """A route that failed FAILING_AFTER_RUNS runs in a row is more than a blip: say so as an event
    the operator alerts page on."""
    with unit_of_work(get_engine(get_settings().database_url)) as session:
        history = link_test_history(session, utcnow() - timedelta(days=1))
    for route in history:
        if route.provider in providers and route.consecutive_failures >= FAILING_AFTER_RUNS:
            emit_event(
                event=ROUTE_FAILING_EVENT,
                resource={"prefect.resource.id": f"broadcasts.route.{route.provider}.{route.route}",
                          "prefect.resource.name": f"{route.provider} {route.route}"},
                payload={"provider": route.provider, "route": route.route,
                         "consecutive_failures": route.consecutive_failures,
                         "message": f"{route.provider} {route.route} has failed {route.consecutive_failures} "
                                    f"link-test runs in a row (last error: {route.last_error}). Alerts to "
                                    f"{route.provider} depend on its other routes until it is fixed."},
            )


def run_link_tests(providers: Sequence[str] | None = None) -> tuple[State, list[dict[str, Any]]]:
    """Runs the flow in this process: its final state, and the table's rows (provider, route, ok,
    latency_ms, error), empty when nothing was tested."""
    state = link_tests(list(providers) if providers is not None else None, return_state=True)
    rows = state.result(raise_on_failure=False)
    return state, rows if isinstance(rows, list) else []

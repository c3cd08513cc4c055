"""The link-test task: one route of one provider, once. Never retried: the next scheduled run is
the retry, and a route that fails now is exactly what the run must report."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from broadcasts import link_tests
from broadcasts.cbc_proxy import get_proxy
from broadcasts.db import get_engine
from broadcasts.settings import get_settings
from tasks.provider_limits import slot_for, slot_wait_seconds


@task(name="link-test-route", task_run_name="link test {provider} {route}", retries=0,
      cache_policy=NO_CACHE)  # every scheduled run calls the route: never a cached result
def link_test_route(provider: str, route: str) -> link_tests.RouteTestResult:
    """Takes the provider's slot (tasks/provider_limits.py) like any send, only around the one proxy call,
    so a link test never overlaps another call to that network."""
    settings = get_settings()
    wait = slot_wait_seconds(settings)
    return link_tests.link_test_route(
        get_engine(settings.database_url), get_proxy(settings), provider, route,
        provider_slot=lambda: slot_for(settings, provider, wait),
    )

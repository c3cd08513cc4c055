"""Link tests (docs/behaviour.md §5): prove each route of each provider works, one call per route, no failover.

A route is one (proxy Lambda, CBC) pair, named like `lambda1-cbc_a`; a passed test refreshes the
route advisor, as an acknowledged send does."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from broadcasts import dao, route_advisor
from broadcasts.cbc_proxy import CBCProxy
from broadcasts.db import unit_of_work
from broadcasts.models import utcnow
from broadcasts.payloads import build_link_test_payload
from broadcasts.providers import get_provider
# Held around the one proxy call: yields None, or why the call goes ahead without the slot.
ProviderSlot = Callable[[], AbstractContextManager[str | None]]


@dataclass(frozen=True)
class RouteTestResult:
    """One route's link test, as stored: `detail` has the proxy `function`, `latency_ms` of the
    proxy call, the `error` when it failed and `slot_stuck` when it went ahead without the slot."""

    provider: str
    route: str
    function: str
    ok: bool
    latency_ms: int | None  # None when the proxy was not called
    identifier: uuid.UUID | None
    message_number: int | None
    detail: dict[str, Any]

    @property
    def error(self) -> str | None:
        return None if self.ok else str(self.detail.get("error", "failed"))

    def as_row(self) -> dict[str, Any]:
        """The row of the link-tests table: provider, route, ok, latency_ms, error."""
        return {"provider": self.provider, "route": self.route, "ok": self.ok,
                "latency_ms": self.latency_ms, "error": self.error}

    def describe(self) -> str:
        """Names the route and how it fared: `ee lambda2-cbc_a (ee-2-proxy: HTTP 500 ...)`, `ee lambda1-cbc_a ok`."""
        if self.ok:
            return f"{self.provider} {self.route} ok"
        return f"{self.provider} {self.route} ({f'{self.function}: ' if self.function else ''}{self.error})"

    @classmethod
    def not_tested(cls, provider: str, route: str, reason: str) -> RouteTestResult:
        """A route whose test could not run or be recorded (the reason says why): a failure."""
        return cls(provider, route, "", False, None, None, None, {"error": reason})


def link_test_route(engine: Engine, proxy: CBCProxy, provider_name: str, route: str, *,
                    provider_slot: ProviderSlot = nullcontext) -> RouteTestResult:
    """One link test on one route (`lambda1-cbc_a` …), recorded in `link_test_result` whatever
    the outcome: the row names the route, and its detail the proxy function and CBC target.
    `provider_slot` is entered only around the proxy call (the provider's slot, a concurrency limit of 1)."""
    provider = get_provider(provider_name)
    routes = {r.name: r for r in proxy.routes(provider)}
    if route not in routes:
        raise ValueError(f"route {route!r} of {provider.name} is not one of {', '.join(routes)}")
    identifier = uuid.uuid4()
    with unit_of_work(engine) as session:
        number = dao.next_message_number(session) if provider.numbered else None
    payload = build_link_test_payload(provider, identifier, number)
    with provider_slot() as slot_note:
        started = time.monotonic()
        outcome = proxy.link_test(routes[route], payload)
        latency_ms = round((time.monotonic() - started) * 1000)
    detail = {**outcome.detail, "function": outcome.function, "cbc_target": routes[route].target,
              "latency_ms": latency_ms, **({"slot_stuck": slot_note} if slot_note else {})}
    with unit_of_work(engine) as session:
        if outcome.ok:
            route_advisor.record_success(session, provider.name, routes[route], utcnow())
        dao.record_link_test_result(
            session,
            provider=provider.name,
            route=route,
            identifier=identifier,
            message_number=number,
            ok=outcome.ok,
            detail=detail,
        )
    return RouteTestResult(provider.name, route, outcome.function, outcome.ok, latency_ms, identifier, number,
                           detail)


def providers_to_test(asked: Sequence[str] | None, enabled: Sequence[str]) -> list[str]:
    """`asked` (each once, in the order given), or every enabled provider when None. An unknown
    name raises UnknownProvider; a known provider that is not enabled may still be tested."""
    chosen = list(enabled) if asked is None else list(dict.fromkeys(asked))
    for name in chosen:
        get_provider(name)
    return chosen


def routes_of(providers: Sequence[str], cbc_b_providers: Sequence[str]) -> tuple[list[str], list[str]]:
    """Every (provider, route name) pair as two parallel lists, each provider's routes in their
    default order: four per provider, two for one without a second CBC (CBC_B_PROVIDERS)."""
    pairs = [(name, route.name) for name in providers
             for route in get_provider(name).routes(second_cbc=name in cbc_b_providers)]
    return [p for p, _ in pairs], [r for _, r in pairs]

"""How each route has fared in link tests (docs/behaviour.md §5): per provider and route, over the
results stored in `link_test_result` since a given time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from broadcasts import dao
from broadcasts.models import LinkTestResult
from broadcasts.providers import PROVIDERS, get_provider


@dataclass(frozen=True)
class RouteHistory:
    """One route's link tests in the window. `consecutive_failures` counts the newest results
    that failed in a row (0 when the newest passed); `last_error` is the newest failure's error,
    even when a pass came after it."""

    provider: str
    route: str  # "lambda1-cbc_a" …; "primary" or "failover" in results stored before routes had a CBC
    runs: int
    passes: int
    pass_rate: float  # passes / runs, 0.0 to 1.0
    consecutive_failures: int
    last_ok: bool
    last_at: datetime
    last_error: str | None
    last_failure_at: datetime | None

    def as_row(self) -> dict[str, Any]:
        return {
            "provider": self.provider, "route": self.route, "runs": self.runs, "passes": self.passes,
            "pass_rate": self.pass_rate, "consecutive_failures": self.consecutive_failures,
            "last_ok": self.last_ok, "last_at": self.last_at.isoformat(), "last_error": self.last_error,
            "last_failure_at": self.last_failure_at.isoformat() if self.last_failure_at else None,
        }


def link_test_history(session: Session, since: datetime, provider: str | None = None) -> list[RouteHistory]:
    """Every (provider, route) with a result at or after `since` (aware UTC), in provider order,
    then route name (`lambda1-cbc_a` first). Only results in the window count, consecutive failures included.
    An unknown `provider` raises UnknownProvider."""
    if provider is not None:
        get_provider(provider)
    by_route: dict[tuple[str, str], list[LinkTestResult]] = {}
    for result in dao.link_test_results(session, since, provider):
        by_route.setdefault((result.provider, result.route), []).append(result)
    return [summarise(p, r, by_route[p, r]) for p, r in sorted(by_route, key=_route_order)]


def summarise(provider: str, route: str, results: Sequence[LinkTestResult]) -> RouteHistory:
    """The history of one route from its results, oldest first (at least one)."""
    passes = sum(1 for r in results if r.ok)
    failures = [r for r in results if not r.ok]
    consecutive = 0
    for result in reversed(results):
        if result.ok:
            break
        consecutive += 1
    last, last_failure = results[-1], failures[-1] if failures else None
    return RouteHistory(
        provider=provider, route=route, runs=len(results), passes=passes,
        pass_rate=passes / len(results), consecutive_failures=consecutive,
        last_ok=last.ok, last_at=last.created_at,
        last_error=_error(last_failure) if last_failure else None,
        last_failure_at=last_failure.created_at if last_failure else None,
    )


def _error(result: LinkTestResult) -> str:
    return str((result.detail or {}).get("error") or "failed (no error recorded)")


def _route_order(key: tuple[str, str]) -> tuple[int, str, str]:
    provider, route = key
    order = list(PROVIDERS)
    return (order.index(provider) if provider in order else len(order), provider, route)

"""The route advisor (docs/behaviour.md §3): which route of a network to try first.

Every route that works (a send acknowledged, a link test passed) is written down as the network's
advice. A send tries the advised route first while the advice is fresh, then the other routes in
their default order: a network whose first route is down then costs one failed call per failover,
not one per send. Stale advice is ignored rather than trusted, since a route that worked minutes
ago says little about now.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from broadcasts.models import RouteAdvice
from broadcasts.providers import Route


def ordered_routes(
    session: Session, provider: str, routes: tuple[Route, ...], now: datetime, fresh_seconds: float
) -> tuple[Route, ...]:
    """`routes` with the advised one first when its advice is at most `fresh_seconds` old. Advice
    dated ahead of `now` by more than that (a writer whose clock runs fast) is ignored too."""
    advice = session.get(RouteAdvice, provider)
    if advice is None or abs((now - advice.updated_at).total_seconds()) > fresh_seconds:
        return routes
    first = [r for r in routes if (r.function, r.target) == (advice.lambda_name, advice.target)]
    return (*first, *(r for r in routes if r not in first))


def record_success(session: Session, provider: str, route: Route, at: datetime) -> None:
    """`route` worked for `provider` at `at`. One statement, safe when two processes write at once:
    the newer success wins, whichever commits last."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = dialect.insert(RouteAdvice).values(
        provider=provider, lambda_name=route.function, target=route.target, updated_at=at)
    excluded = statement.excluded
    session.execute(statement.on_conflict_do_update(
        index_elements=[RouteAdvice.provider],
        set_={"lambda_name": excluded.lambda_name, "target": excluded.target, "updated_at": excluded.updated_at},
        where=RouteAdvice.updated_at <= excluded.updated_at,
    ))


def advice(session: Session) -> list[RouteAdvice]:
    """Every network's advice, for the operator's view."""
    return list(session.scalars(select(RouteAdvice).order_by(RouteAdvice.provider)))

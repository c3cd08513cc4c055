"""The CBC proxy client: AWS Lambda `Invoke` with failover. The only module that imports botocore.

A route is one (proxy Lambda, CBC) pair (`providers.Route`); the payload names the CBC in
`cbc_target`. Every way one route can fail (a client error, no connection, a timeout, a status
above 299, a function error) becomes a `RouteFailure`; when every route fails, `AllRoutesFailed`
(retryable) names each route and why. Anything else, such as a payload our own code cannot serialise, is
not a route failure and propagates unchanged. boto3 never retries on its own: a retry the
orchestrator cannot see would be a send it cannot count.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from broadcasts.errors import AllRoutesFailed
from broadcasts.providers import PROVIDERS, Provider, Route
from broadcasts.settings import Settings


@dataclass(frozen=True)
class RouteFailure:
    function: str
    cbc_target: str
    error: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


class RouteFailed(Exception):
    def __init__(self, failure: RouteFailure) -> None:
        super().__init__(failure.error)
        self.failure = failure


@dataclass(frozen=True)
class Delivered:
    """The proxy accepted the payload on `route` (`function` is its full function name);
    `failures` are the routes tried before it."""

    route: Route
    function: str
    failures: tuple[RouteFailure, ...]

    @property
    def answered_by(self) -> str:
        """What the history's `route` column records: `ee-1-proxy/cbc_b`."""
        return f"{self.function}/{self.route.target}"


@dataclass(frozen=True)
class LinkTestOutcome:
    function: str
    ok: bool
    detail: dict[str, Any]


def lambda_config(settings: Settings, signed: bool = True) -> Config:
    return Config(
        region_name=settings.aws_region,
        retries={"total_max_attempts": 1, "mode": "standard"},  # one HTTP attempt per route
        connect_timeout=settings.cbc_proxy_connect_timeout,
        read_timeout=settings.cbc_proxy_read_timeout,
        max_pool_connections=20,
        **({} if signed else {"signature_version": UNSIGNED}),
    )


@functools.cache
def _lambda_client(settings: Settings) -> Any:
    session = boto3.session.Session()
    # A local endpoint (the simulator) needs no credentials; real AWS always signs.
    signed = settings.cbc_proxy_endpoint_url is None or session.get_credentials() is not None
    return session.client(
        "lambda",
        endpoint_url=settings.cbc_proxy_endpoint_url,
        config=lambda_config(settings, signed=signed),
    )


def get_proxy(settings: Settings) -> CBCProxy:
    """The process's proxy client (one boto3 client per process and configuration)."""
    return CBCProxy(_lambda_client(settings), settings.cbc_proxy_function_prefix, settings.cbc_b_providers)


class CBCProxy:
    def __init__(self, lambda_client: Any, function_prefix: str = "",
                 cbc_b_providers: tuple[str, ...] = tuple(PROVIDERS)) -> None:
        self._client = lambda_client
        self._prefix = function_prefix
        self._cbc_b = frozenset(cbc_b_providers)

    def function_name(self, function: str) -> str:
        return f"{self._prefix}{function}"

    def routes(self, provider: Provider) -> tuple[Route, ...]:
        """The provider's routes in the default order: four, or two without a second CBC."""
        return provider.routes(second_cbc=provider.name in self._cbc_b)

    def invoke(self, route: Route, payload: dict[str, Any]) -> None:
        """One HTTP attempt on one route; raises RouteFailed for every way the route can fail."""
        function = self.function_name(route.function)
        # Outside the try: our own errors propagate.
        body = json.dumps({**payload, "cbc_target": route.target}).encode("utf-8")
        try:
            response = self._client.invoke(
                FunctionName=function, InvocationType="RequestResponse", Payload=body
            )
            answer = response["Payload"].read()
        except ClientError as error:
            info = error.response.get("Error", {})
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            reason = f"HTTP {status} {info.get('Code', 'error')}: {info.get('Message', '')}".strip()
            raise RouteFailed(RouteFailure(function, route.target, reason)) from error
        except BotoCoreError as error:
            raise RouteFailed(RouteFailure(function, route.target, f"{type(error).__name__}: {error}")) from error
        if response.get("StatusCode", 0) > 299:
            raise RouteFailed(RouteFailure(function, route.target, f"status code {response['StatusCode']}"))
        if response.get("FunctionError"):
            message = answer.decode("utf-8", "replace")[:500]
            raise RouteFailed(
                RouteFailure(function, route.target, f"FunctionError {response['FunctionError']}: {message}"))

    def send(self, routes: tuple[Route, ...], payload: dict[str, Any], deadline: datetime | None = None) -> Delivered:
        """The identical payload (with each route's `cbc_target`) on each route in turn until one
        accepts it; AllRoutesFailed if none does. No route is started after `deadline` (the
        event's expiry)."""
        failures: list[RouteFailure] = []
        for route in routes:
            if deadline is not None and deadline < datetime.now(UTC):
                failures.append(RouteFailure(self.function_name(route.function), route.target,
                                             "not tried: the event expired"))
                continue
            try:
                self.invoke(route, payload)
            except RouteFailed as failed:
                failures.append(failed.failure)
                continue
            return Delivered(route, self.function_name(route.function), tuple(failures))
        raise AllRoutesFailed([failure.as_dict() for failure in failures])

    def link_test(self, route: Route, payload: dict[str, Any]) -> LinkTestOutcome:
        """One route only (no failover): a link test proves that route."""
        try:
            self.invoke(route, payload)
        except RouteFailed as failed:
            return LinkTestOutcome(failed.failure.function, False, failed.failure.as_dict())
        return LinkTestOutcome(self.function_name(route.function), True, {})

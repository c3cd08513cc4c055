"""The proxy client's failover over the four routes, error mapping and one-request-per-route rule.

The integration tests drive an unmodified boto3 client over HTTP against the simulator."""

from __future__ import annotations

import io
import json
import socket
import uuid

import boto3
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from broadcasts.cbc_proxy import CBCProxy, RouteFailed, get_proxy, lambda_config
from broadcasts.errors import AllRoutesFailed
from broadcasts.payloads import build_link_test_payload
from broadcasts.providers import PROVIDERS
from broadcasts.settings import get_settings

EE = PROVIDERS["ee"]
EE_ROUTES = EE.routes(second_cbc=True)


def alert_payload(identifier: uuid.UUID | None = None) -> dict:
    return {
        "message_type": "alert", "identifier": str(identifier or uuid.uuid4()), "message_format": "cap",
        "headline": "GOV.UK Notify Broadcast", "description": "Flood warning",
        "areas": [{"polygon": [[51.5, -0.1], [51.6, -0.1], [51.6, 0.0]]}],
        "sent": "2026-11-27T10:00:00-00:00", "expires": "2030-11-27T12:00:00-00:00",
        "language": "en-GB", "channel": "severe",
    }


class ScriptedLambda:
    """A stand-in Lambda client whose invoke raises or answers as scripted, per function
    (`ee-1-proxy`) or per route (`ee-1-proxy/cbc_b`); `calls` are the routes called."""

    def __init__(self, answers: dict | None = None) -> None:
        self.answers = answers or {}
        self.calls: list[str] = []

    def invoke(self, FunctionName: str, Payload: bytes = b"{}", **_kwargs):  # type: ignore[no-untyped-def]  # noqa: N803
        route = f"{FunctionName}/{json.loads(Payload).get('cbc_target')}"
        self.calls.append(route)
        answer = self.answers.get(route, self.answers.get(FunctionName, {"StatusCode": 200}))
        if isinstance(answer, Exception):
            raise answer
        return {**answer, "Payload": io.BytesIO(b'{"errorMessage": "bad payload"}')}


ROUTE_FAILURES = {
    "client error": ClientError({"Error": {"Code": "ServiceException", "Message": "boom"}, "ResponseMetadata": {"HTTPStatusCode": 500}}, "Invoke"),
    "connection error": EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
    "connect timeout": ConnectTimeoutError(endpoint_url="http://127.0.0.1:1"),
    "read timeout": ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
    "status above 299": {"StatusCode": 502},
    "function error": {"StatusCode": 200, "FunctionError": "Unhandled"},
}


def test_a_network_has_four_routes_in_order_or_two_without_a_second_cbc():
    proxy = CBCProxy(ScriptedLambda(), cbc_b_providers=("ee",))
    assert [(r.name, r.function, r.target) for r in proxy.routes(EE)] == [
        ("lambda1-cbc_a", "ee-1-proxy", "cbc_a"), ("lambda1-cbc_b", "ee-1-proxy", "cbc_b"),
        ("lambda2-cbc_a", "ee-2-proxy", "cbc_a"), ("lambda2-cbc_b", "ee-2-proxy", "cbc_b")]
    assert [r.name for r in proxy.routes(PROVIDERS["o2"])] == ["lambda1-cbc_a", "lambda2-cbc_a"]


@pytest.mark.parametrize("failure", ROUTE_FAILURES, ids=list(ROUTE_FAILURES))
def test_every_route_failure_mode_makes_the_send_fail_over_to_the_next_route(failure):
    client = ScriptedLambda({"ee-1-proxy/cbc_a": ROUTE_FAILURES[failure]})
    delivered = CBCProxy(client).send(EE_ROUTES, alert_payload())
    assert (delivered.route.name, delivered.answered_by) == ("lambda1-cbc_b", "ee-1-proxy/cbc_b")
    assert client.calls == ["ee-1-proxy/cbc_a", "ee-1-proxy/cbc_b"]
    assert [(f.function, f.cbc_target) for f in delivered.failures] == [("ee-1-proxy", "cbc_a")]


def test_a_lambda_down_for_both_its_cbcs_fails_over_to_the_other_lambda():
    client = ScriptedLambda({"ee-1-proxy": ROUTE_FAILURES["client error"]})
    delivered = CBCProxy(client).send(EE_ROUTES, alert_payload())
    assert delivered.answered_by == "ee-2-proxy/cbc_a"
    assert client.calls == ["ee-1-proxy/cbc_a", "ee-1-proxy/cbc_b", "ee-2-proxy/cbc_a"]


@pytest.mark.parametrize("failure", ROUTE_FAILURES, ids=list(ROUTE_FAILURES))
def test_every_route_failure_mode_is_a_route_failure(failure):
    with pytest.raises(RouteFailed):
        CBCProxy(ScriptedLambda({"ee-1-proxy": ROUTE_FAILURES[failure]})).invoke(EE_ROUTES[0], {})


def test_our_own_type_error_is_not_swallowed_as_a_route_failure():
    client = ScriptedLambda({"ee-1-proxy": TypeError("a bug in our code")})
    with pytest.raises(TypeError):
        CBCProxy(client).send(EE_ROUTES, alert_payload())
    with pytest.raises(TypeError):
        CBCProxy(ScriptedLambda()).send(EE_ROUTES, {"unserialisable": object()})


def test_the_function_prefix_is_prepended_to_every_route():
    client = ScriptedLambda({"arn:aws:lambda:eu-west-2:1:function:ee-1-proxy": ROUTE_FAILURES["read timeout"]})
    delivered = CBCProxy(client, "arn:aws:lambda:eu-west-2:1:function:").send(EE_ROUTES, alert_payload())
    assert delivered.function == "arn:aws:lambda:eu-west-2:1:function:ee-2-proxy"


def test_sdk_retries_are_off_and_timeouts_explicit():
    config = lambda_config(get_settings())
    assert config.retries == {"total_max_attempts": 1, "mode": "standard"}
    assert config.connect_timeout > 0 and config.read_timeout > config.connect_timeout


# ---- against the simulator, over HTTP -------------------------------------------------------


@pytest.fixture
def proxy(environment, sim) -> CBCProxy:  # type: ignore[no-untyped-def]
    return get_proxy(get_settings())


@pytest.mark.parametrize(
    "fault",
    [{"http_status": 400}, {"http_status": 500}, {"http_status": 429}, {"function_error": "Unhandled"}, {"hang": True}],
    ids=["400", "500", "429", "function-error", "hang-beyond-read-timeout"],
)
def test_a_failed_route_is_followed_by_the_next_with_one_request_per_route(proxy, sim, fault):
    sim.fault("ee-1-proxy", **fault, cbc_target="cbc_a", times=1)
    payload = alert_payload()
    delivered = proxy.send(EE_ROUTES, payload)
    assert delivered.answered_by == "ee-1-proxy/cbc_b"
    calls = sim.invocations()
    assert [(c["function"], c["payload"]["cbc_target"]) for c in calls] == [
        ("ee-1-proxy", "cbc_a"), ("ee-1-proxy", "cbc_b")]  # no SDK retry
    # The identical payload, but for the CBC each route names.
    assert calls[0]["payload"] == {**payload, "cbc_target": "cbc_a"}
    assert calls[1]["payload"] == {**payload, "cbc_target": "cbc_b"}


def test_every_route_failing_raises_a_retryable_error_naming_each(proxy, sim):
    sim.fault("ee-1-proxy", http_status=500)
    sim.fault("ee-2-proxy", function_error="Unhandled", cbc_target="cbc_a")
    sim.fault("ee-2-proxy", http_status=503, cbc_target="cbc_b")
    with pytest.raises(AllRoutesFailed) as raised:
        proxy.send(EE_ROUTES, alert_payload())
    message = str(raised.value)
    assert "ee-1-proxy/cbc_a: HTTP 500" in message and "ee-1-proxy/cbc_b: HTTP 500" in message
    assert "ee-2-proxy/cbc_a: FunctionError" in message and "ee-2-proxy/cbc_b: HTTP 503" in message
    assert [(f["function"], f["cbc_target"]) for f in raised.value.failures] == [
        (r.function, r.target) for r in EE_ROUTES]
    assert len(sim.invocations()) == 4


def test_an_invalid_payload_is_a_function_error_with_the_reason(proxy, sim):
    payload = alert_payload()
    payload["surplus"] = "key"
    with pytest.raises(AllRoutesFailed) as raised:
        proxy.send(EE_ROUTES, payload)
    assert "surplus" in str(raised.value)
    assert {c["outcome"] for c in sim.invocations()} == {"function_error"}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RouteByFunction:
    """Sends each function to its own real boto3 client (so one route can be unreachable)."""

    def __init__(self, clients: dict[str, object]) -> None:
        self.clients = clients

    def invoke(self, FunctionName: str, **kwargs):  # type: ignore[no-untyped-def]  # noqa: N803
        return self.clients[FunctionName].invoke(FunctionName=FunctionName, **kwargs)


def test_a_refused_connection_on_the_primary_fails_over(environment, sim):
    settings = get_settings()

    def client(url: str):  # type: ignore[no-untyped-def]
        return boto3.client("lambda", endpoint_url=url, config=lambda_config(settings),
                            aws_access_key_id="test", aws_secret_access_key="test")

    proxy = CBCProxy(RouteByFunction({
        "ee-1-proxy": client(f"http://127.0.0.1:{_closed_port()}"),
        "ee-2-proxy": client(settings.cbc_proxy_endpoint_url),
    }))
    delivered = proxy.send(EE_ROUTES, alert_payload())
    assert delivered.function == "ee-2-proxy"
    assert all("EndpointConnectionError" in f.error for f in delivered.failures)
    assert [c["function"] for c in sim.invocations()] == ["ee-2-proxy"]


def test_a_link_test_tries_only_the_route_it_is_given(proxy, sim):
    sim.fault("vodafone-1-proxy", http_status=500, cbc_target="cbc_b")
    payload = build_link_test_payload(PROVIDERS["vodafone"], uuid.uuid4(), 5)
    lambda1_a, lambda1_b, *_ = PROVIDERS["vodafone"].routes(second_cbc=True)
    failed = proxy.link_test(lambda1_b, payload)
    ok = proxy.link_test(lambda1_a, payload)
    assert (failed.ok, ok.ok) == (False, True)
    assert "500" in failed.detail["error"] and failed.detail["cbc_target"] == "cbc_b"
    assert [(c["function"], c["payload"]["cbc_target"]) for c in sim.invocations()] == [
        ("vodafone-1-proxy", "cbc_b"), ("vodafone-1-proxy", "cbc_a")]

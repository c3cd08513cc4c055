"""The Lambda Invoke API through an unmodified boto3 client against the simulator process."""

import json

import botocore.exceptions
import pytest
from lxml import etree

from tests.simulator_fixture import make_lambda_client, start_simulator

pytestmark = pytest.mark.simulator

ARN_PREFIX = "arn:aws:lambda:eu-west-2:123456789012:function:"
PROXIES = [
    ("ee-1-proxy", "cap"),
    ("ee-2-proxy", "cap"),
    ("three-1-proxy", "cap"),
    ("three-2-proxy", "cap"),
    ("o2-1-proxy", "cap"),
    ("o2-2-proxy", "cap"),
    ("vodafone-1-proxy", "ibag"),
    ("vodafone-2-proxy", "ibag"),
]
ROOT_TAG = {
    "cap": "{urn:oasis:names:tc:emergency:cap:1.2}alert",
    "ibag": "{ibag:1.0}IBAG_Alert_Attributes",
}


def invoke(client, function_name, payload, **kwargs):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    response = client.invoke(
        FunctionName=function_name, InvocationType="RequestResponse", Payload=body, **kwargs
    )
    response["Body"] = json.loads(response["Payload"].read())
    return response


@pytest.fixture(scope="module")
def prefixed_simulator():
    with start_simulator(prefix=ARN_PREFIX) as client:
        yield client


@pytest.mark.parametrize("function, fmt", PROXIES)
def test_valid_payload_succeeds_and_renders_the_networks_xml(
    sim, lambda_client, make_payload, function, fmt
):
    payload = make_payload("alert", fmt)
    response = invoke(lambda_client, function, payload)

    assert response["StatusCode"] == 200
    assert "FunctionError" not in response
    assert response["ExecutedVersion"] == "$LATEST"
    assert response["Body"]["status"] == "ok"
    assert response["Body"]["identifier"] == payload["identifier"]
    [record] = sim.invocations()
    assert (record["function"], record["function_name"]) == (function, function)
    assert (record["outcome"], record["status_code"], record["error"]) == ("ok", 200, None)
    assert record["payload"] == payload
    assert etree.fromstring(record["xml"].encode()).tag == ROOT_TAG[fmt]


def test_canary_answers_ok_for_any_json(sim, lambda_client):
    response = invoke(lambda_client, "canary", {"ping": 1})
    assert response["StatusCode"] == 200
    assert "FunctionError" not in response
    assert sim.invocations()[0]["outcome"] == "ok"
    assert sim.invocations()[0]["xml"] is None


@pytest.mark.parametrize("function, fmt", [("ee-2-proxy", "cap"), ("vodafone-1-proxy", "ibag")])
def test_prefixed_function_names_are_served_when_a_prefix_is_configured(
    prefixed_simulator, make_payload, function, fmt
):
    prefixed_simulator.reset()
    client = make_lambda_client(prefixed_simulator.url)
    for name in (f"{ARN_PREFIX}{function}", f"{ARN_PREFIX}canary"):
        response = invoke(client, name, make_payload("test", fmt))
        assert (response["StatusCode"], response.get("FunctionError")) == (200, None)
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        invoke(client, function, make_payload("test", fmt))

    records = prefixed_simulator.invocations()
    assert [r["function"] for r in records] == [function, "canary", None]
    assert records[0]["function_name"] == f"{ARN_PREFIX}{function}"


def test_unknown_function_raises_resource_not_found(sim, lambda_client, make_payload):
    with pytest.raises(lambda_client.exceptions.ResourceNotFoundException) as raised:
        invoke(lambda_client, "ee-3-proxy", make_payload())
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    [record] = sim.invocations()
    assert (record["function"], record["outcome"], record["status_code"]) == (
        None,
        "http_status",
        404,
    )


def test_invalid_payload_is_a_function_error_naming_the_key(sim, lambda_client, make_payload):
    payload = make_payload("alert", "cap", language="Welsh")
    response = invoke(lambda_client, "three-1-proxy", payload)

    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    assert response["Body"]["errorType"] == "InvalidPayload"
    assert response["Body"]["errorMessage"].startswith("language:")
    [record] = sim.invocations()
    assert record["outcome"] == "function_error"
    assert record["error"] == response["Body"]["errorMessage"]
    assert record["xml"] is None


def test_cap_payload_sent_to_vodafone_is_refused(sim, lambda_client, make_payload):
    response = invoke(lambda_client, "vodafone-2-proxy", make_payload("alert", "cap"))
    assert response["FunctionError"] == "Unhandled"
    assert "message_number: missing" in response["Body"]["errorMessage"]


def test_body_that_is_not_json_is_a_function_error_and_recorded_as_text(sim, lambda_client):
    response = invoke(lambda_client, "o2-1-proxy", b"<alert/>")
    assert response["FunctionError"] == "Unhandled"
    assert response["Body"]["errorMessage"].startswith("payload: not valid JSON")
    assert sim.invocations()[0]["payload"] == "<alert/>"


def test_asynchronous_invocation_is_refused(sim, lambda_client, make_payload):
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        lambda_client.invoke(
            FunctionName="ee-1-proxy",
            InvocationType="Event",
            Payload=json.dumps(make_payload()).encode(),
        )
    assert raised.value.response["Error"]["Code"] == "InvalidRequestContentException"


def test_invocations_are_recorded_in_arrival_order_with_outcomes(sim, lambda_client, make_payload):
    invoke(lambda_client, "ee-1-proxy", make_payload("alert"))
    invoke(lambda_client, "vodafone-1-proxy", make_payload("alert", "cap"))
    sim.fault("three-1-proxy", http_status=500, times=1)
    with pytest.raises(botocore.exceptions.ClientError):
        invoke(lambda_client, "three-1-proxy", make_payload("cancel"))
    invoke(lambda_client, "o2-2-proxy", make_payload("update"))

    records = sim.invocations()
    assert [(r["function"], r["outcome"], r["status_code"]) for r in records] == [
        ("ee-1-proxy", "ok", 200),
        ("vodafone-1-proxy", "function_error", 200),
        ("three-1-proxy", "http_status", 500),
        ("o2-2-proxy", "ok", 200),
    ]
    assert records[2]["fault"] == {"http_status": 500, "times": 1}
    received = [r["received_at"] for r in records]
    assert received == sorted(received)
    assert all(r["received_at"] <= r["responded_at"] for r in records)


def test_invocations_can_be_filtered_by_function(sim, lambda_client, make_payload):
    for function in ("ee-1-proxy", "ee-2-proxy", "ee-1-proxy"):
        invoke(lambda_client, function, make_payload())
    assert [r["function"] for r in sim.invocations("ee-1-proxy")] == ["ee-1-proxy"] * 2


def test_reset_clears_records_and_faults(sim, lambda_client, make_payload):
    sim.fault("ee-1-proxy", http_status=500)
    with pytest.raises(botocore.exceptions.ClientError):
        invoke(lambda_client, "ee-1-proxy", make_payload())
    sim.reset()
    assert sim.invocations() == []
    assert sim.faults() == {}
    assert invoke(lambda_client, "ee-1-proxy", make_payload())["StatusCode"] == 200


def test_nan_in_a_payload_is_not_json(sim, lambda_client):
    response = invoke(lambda_client, "ee-1-proxy", b'{"areas": [{"polygon": [[NaN, 0]]}]}')
    assert response["FunctionError"] == "Unhandled"
    assert "NaN is not JSON" in response["Body"]["errorMessage"]
    assert sim.invocations()[0]["outcome"] == "function_error"

"""Injected faults as a boto3 client sees them: errors, recovery, latency and hangs."""

import json
import threading
import time
import urllib.error
import urllib.request

import botocore.exceptions
import pytest

from tests.simulator_fixture import make_lambda_client

pytestmark = pytest.mark.simulator


def invoke(client, function_name, payload):
    response = client.invoke(
        FunctionName=function_name,
        InvocationType="RequestResponse",
        Payload=json.dumps(payload).encode(),
    )
    response["Body"] = json.loads(response["Payload"].read())
    return response


def wait_for_outcome(sim, outcome, timeout=2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = [r for r in sim.invocations() if r["outcome"] == outcome]
        if records:
            return records
        time.sleep(0.02)
    pytest.fail(f"no invocation reached outcome {outcome!r}: {sim.invocations()}")


@pytest.mark.parametrize(
    "status, code",
    [
        (400, "InvalidRequestContentException"),
        (429, "TooManyRequestsException"),
        (500, "ServiceException"),
        (502, "ResourceNotReadyException"),
        (503, "ServiceUnavailableException"),
    ],
)
def test_http_status_fault_raises_client_error(sim, lambda_client, make_payload, status, code):
    sim.fault("ee-1-proxy", http_status=status)
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        invoke(lambda_client, "ee-1-proxy", make_payload())
    error = raised.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == status
    assert error["Error"]["Code"] == code
    [record] = sim.invocations()
    assert (record["outcome"], record["status_code"]) == ("http_status", status)


def test_function_error_fault_answers_with_its_message_and_type(sim, lambda_client, make_payload):
    sim.fault("vodafone-2-proxy", function_error="CBC unreachable", error_type="ConnectionError")
    response = invoke(lambda_client, "vodafone-2-proxy", make_payload("alert", "ibag"))
    assert response["FunctionError"] == "Unhandled"
    assert response["Body"]["errorMessage"] == "CBC unreachable"
    assert response["Body"]["errorType"] == "ConnectionError"
    assert sim.invocations()[0]["outcome"] == "function_error"


def test_fault_applies_for_its_times_then_calls_recover(sim, lambda_client, make_payload):
    sim.fault("o2-1-proxy", http_status=500, times=2)
    outcomes = []
    for _ in range(3):
        try:
            outcomes.append(invoke(lambda_client, "o2-1-proxy", make_payload())["StatusCode"])
        except botocore.exceptions.ClientError as error:
            outcomes.append(error.response["ResponseMetadata"]["HTTPStatusCode"])
    assert outcomes == [500, 500, 200]
    assert sim.faults() == {}


def test_fault_on_one_function_leaves_its_failover_alone(sim, lambda_client, make_payload):
    sim.fault("ee-1-proxy", http_status=500)
    assert invoke(lambda_client, "ee-2-proxy", make_payload())["StatusCode"] == 200


def test_delay_adds_latency_then_answers_normally(sim, lambda_client, make_payload):
    sim.fault("three-2-proxy", delay_seconds=0.5, times=1)
    started = time.monotonic()
    response = invoke(lambda_client, "three-2-proxy", make_payload())
    assert time.monotonic() - started >= 0.5
    assert response["StatusCode"] == 200
    assert sim.invocations()[0]["outcome"] == "ok"


def test_answer_delay_takes_the_message_at_once_and_answers_late(sim, lambda_client, make_payload):
    sim.fault("three-2-proxy", answer_delay_seconds=1, times=1)
    answered = threading.Event()
    threading.Thread(target=lambda: (invoke(lambda_client, "three-2-proxy", make_payload()), answered.set()),
                     daemon=True).start()
    deadline = time.monotonic() + 0.8
    while not sim.invocations() or sim.invocations()[0]["outcome"] == "pending":
        assert time.monotonic() < deadline, sim.invocations()
        time.sleep(0.02)
    assert sim.invocations()[0]["outcome"] == "ok"  # the network has it...
    assert not answered.is_set()  # ...and the caller has no answer yet
    assert answered.wait(5)


def test_delay_then_fault_answers_late_with_the_fault(sim, lambda_client, make_payload):
    sim.fault("three-2-proxy", delay_seconds=0.3, http_status=429, times=1)
    started = time.monotonic()
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        invoke(lambda_client, "three-2-proxy", make_payload())
    assert time.monotonic() - started >= 0.3
    assert raised.value.response["Error"]["Code"] == "TooManyRequestsException"


def test_hang_outlasts_the_client_read_timeout(sim, lambda_client, make_payload):
    sim.fault("ee-1-proxy", hang=True, times=1)
    with pytest.raises(botocore.exceptions.ReadTimeoutError):
        invoke(lambda_client, "ee-1-proxy", make_payload())

    [record] = sim.invocations()
    assert (record["outcome"], record["responded_at"]) == ("hang", None)
    # The server still answers other calls while one hangs.
    assert invoke(lambda_client, "ee-1-proxy", make_payload())["StatusCode"] == 200


def test_reset_releases_a_hanging_call_promptly(sim, make_payload):
    sim.fault("vodafone-1-proxy", hang=True)
    patient = make_lambda_client(sim.url)
    patient.meta.config.read_timeout = 30
    answers = []

    def call():
        try:
            answers.append(invoke(patient, "vodafone-1-proxy", make_payload("test", "ibag")))
        except botocore.exceptions.ClientError as error:
            answers.append(error.response["ResponseMetadata"]["HTTPStatusCode"])

    caller = threading.Thread(target=call)
    caller.start()
    wait_for_outcome(sim, "hang")
    released_at = time.monotonic()
    sim.reset()
    caller.join(timeout=5)

    assert not caller.is_alive(), "reset did not release the hanging call"
    assert time.monotonic() - released_at < 2
    assert answers == [503]
    assert sim.invocations() == []


@pytest.mark.parametrize(
    "options",
    [{"http_status": 200}, {}, {"hang": True, "http_status": 500}, {"delay_seconds": -1}],
)
def test_invalid_fault_request_is_refused_with_422(sim, options):
    with pytest.raises(AssertionError, match="answered 422"):
        sim.fault("ee-1-proxy", **options)
    assert sim.faults() == {}


def test_one_route_down_fails_only_calls_for_its_cbc(sim, lambda_client, make_payload):
    sim.fault("ee-1-proxy", http_status=500, cbc_target="cbc_a")
    with pytest.raises(botocore.exceptions.ClientError):
        invoke(lambda_client, "ee-1-proxy", {**make_payload(), "cbc_target": "cbc_a"})
    assert invoke(lambda_client, "ee-1-proxy", {**make_payload(), "cbc_target": "cbc_b"})["StatusCode"] == 200
    assert [(r["payload"]["cbc_target"], r["outcome"]) for r in sim.invocations()] == [
        ("cbc_a", "http_status"), ("cbc_b", "ok")]
    assert sim.faults() == {"ee-1-proxy": [{"http_status": 500, "cbc_target": "cbc_a", "calls_left": None}]}


def test_fault_for_unknown_function_is_refused_with_422(sim):
    with pytest.raises(AssertionError, match="answered 422.*function"):
        sim.fault("ee-9-proxy", http_status=500)


def test_fault_request_that_is_not_json_is_refused_with_422(sim):
    request = urllib.request.Request(f"{sim.url}/_simulator/faults", data=b"hang", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 422
    assert json.load(refused.value)["detail"][0].startswith("body: not valid JSON")

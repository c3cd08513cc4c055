"""Fault requests and the per-function fault queue, without a server."""

import asyncio

import pytest

from simulator.faults import Fault, FaultRequestError, Faults, parse_fault
from simulator.functions import FUNCTIONS


def test_fault_request_names_function_and_effect():
    body = {"function": "o2-2-proxy", "http_status": 502, "times": 2}
    function, fault = parse_fault(body, FUNCTIONS)
    assert function == "o2-2-proxy"
    assert fault == Fault(http_status=502, times=2)


@pytest.mark.parametrize(
    "body, reason_starts",
    [
        ({"function": "ee-3-proxy", "http_status": 500}, "function:"),
        ({"function": "prod-ee-1-proxy", "http_status": 500}, "function:"),
        ({"function": "ee-1-proxy"}, "fault has no effect"),
        ({"function": "ee-1-proxy", "times": 3}, "fault has no effect"),
        ({"function": "ee-1-proxy", "http_status": 200}, "http_status:"),
        ({"function": "ee-1-proxy", "http_status": True}, "http_status:"),
        ({"function": "ee-1-proxy", "function_error": ""}, "function_error:"),
        ({"function": "ee-1-proxy", "delay_seconds": -1}, "delay_seconds:"),
        ({"function": "ee-1-proxy", "delay_seconds": "1"}, "delay_seconds:"),
        ({"function": "ee-1-proxy", "answer_delay_seconds": -1}, "answer_delay_seconds:"),
        ({"function": "ee-1-proxy", "answer_delay_seconds": 1, "http_status": 500}, "answer_delay_seconds:"),
        ({"function": "ee-1-proxy", "answer_delay_seconds": 1, "hang": True}, "hang:"),
        ({"function": "ee-1-proxy", "hang": "yes"}, "hang:"),
        ({"function": "ee-1-proxy", "hang": True, "times": 0}, "times:"),
        ({"function": "ee-1-proxy", "hang": True, "http_status": 500}, "hang:"),
        ({"function": "ee-1-proxy", "http_status": 500, "function_error": "x"}, "http_status and"),
        ({"function": "ee-1-proxy", "http_status": 500, "error_type": "X"}, "error_type:"),
        ({"function": "ee-1-proxy", "http_status": 500, "colour": "red"}, "colour:"),
        ({"function": "ee-1-proxy", "http_status": 500, "cbc_target": "cbc_c"}, "cbc_target:"),
        ({"function": "ee-1-proxy", "cbc_target": "cbc_a"}, "fault has no effect"),
        (["ee-1-proxy"], "body:"),
    ],
)
def test_fault_request_without_a_valid_function_and_effect_is_refused(body, reason_starts):
    with pytest.raises(FaultRequestError) as refused:
        parse_fault(body, FUNCTIONS)
    assert any(r.startswith(reason_starts) for r in refused.value.reasons), refused.value.reasons


def test_fault_with_times_is_used_up_then_calls_recover():
    faults = Faults()
    faults.add("ee-1-proxy", Fault(http_status=500, times=2))
    taken = [faults.take("ee-1-proxy") for _ in range(3)]
    assert taken == [Fault(http_status=500, times=2), Fault(http_status=500, times=2), None]


def test_fault_without_times_applies_to_every_call():
    faults = Faults()
    faults.add("ee-1-proxy", Fault(function_error="boom"))
    assert all(faults.take("ee-1-proxy") == Fault(function_error="boom") for _ in range(5))


def test_faults_for_one_function_are_consumed_in_registration_order():
    faults = Faults()
    faults.add("ee-1-proxy", Fault(http_status=500, times=1))
    faults.add("ee-1-proxy", Fault(http_status=429, times=2))
    statuses = [getattr(faults.take("ee-1-proxy"), "http_status", None) for _ in range(4)]
    assert statuses == [500, 429, 429, None]


def test_a_fault_applies_only_to_its_own_function():
    faults = Faults()
    faults.add("ee-1-proxy", Fault(http_status=500))
    assert faults.take("ee-2-proxy") is None


def test_a_fault_with_a_cbc_target_applies_only_to_calls_for_that_cbc():
    faults = Faults()
    faults.add("ee-1-proxy", Fault(http_status=500, cbc_target="cbc_a", times=1))
    faults.add("ee-1-proxy", Fault(http_status=503, times=1))
    # A call for cbc_b skips the cbc_a fault and takes the one for every CBC behind it.
    assert faults.take("ee-1-proxy", "cbc_b") == Fault(http_status=503, times=1)
    assert faults.take("ee-1-proxy") is None  # names no CBC: meets only faults that name none
    assert faults.take("ee-1-proxy", "cbc_a") == Fault(http_status=500, cbc_target="cbc_a", times=1)
    assert faults.take("ee-1-proxy", "cbc_a") is None


def test_pending_lists_queued_faults_with_calls_left():
    faults = Faults()
    faults.add("ee-1-proxy", Fault(http_status=500, times=2))
    faults.take("ee-1-proxy")
    assert faults.pending() == {"ee-1-proxy": [{"http_status": 500, "times": 2, "calls_left": 1}]}


def test_reset_forgets_faults_and_releases_held_calls():
    async def scenario():
        faults = Faults()
        faults.add("ee-1-proxy", Fault(hang=True))
        held = asyncio.create_task(faults.hold())
        await asyncio.sleep(0.01)
        assert not held.done()
        faults.reset()
        await asyncio.wait_for(held, timeout=1)
        assert faults.take("ee-1-proxy") is None
        # A call that starts hanging after the reset waits for the next one.
        later = asyncio.create_task(faults.hold())
        await asyncio.sleep(0.01)
        assert not later.done()
        faults.reset()
        await asyncio.wait_for(later, timeout=1)

    asyncio.run(scenario())

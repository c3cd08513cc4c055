"""One Lambda invocation from arrival to answer.

Order of work, each step able to end the call: find the function (404 if unknown) → record the
arrival → apply an injected fault (delay, hang, HTTP status, function error) → validate the
payload against the contract → render the XML a real proxy would send → answer ok.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, Callable

from starlette.responses import Response

from simulator import responses
from simulator.cap import render_cap
from simulator.faults import Fault, Faults
from simulator.functions import Function, resolve
from simulator.ibag import render_ibag
from simulator.invocations import Invocation, Invocations
from simulator.payload_rules import payload_problems

RENDERERS: dict[str, Callable[[dict[str, Any]], bytes]] = {"cap": render_cap, "ibag": render_ibag}


@dataclass
class SimulatorState:
    """Everything one simulator app remembers; a reset empties it."""

    prefix: str = ""
    invocations: Invocations = field(default_factory=Invocations)
    faults: Faults = field(default_factory=Faults)

    def reset(self) -> None:
        self.invocations.clear()
        self.faults.reset()


async def handle_invocation(
    state: SimulatorState,
    function_name: str,
    invocation_type: str | None,
    body: bytes,
    received_at: str,
) -> Response:
    """Answer one `Invoke` call of `function_name` (as called, prefix included)."""
    function = resolve(function_name, state.prefix)
    payload, parse_problem = parse_payload(body)
    fault = None
    if function is not None and _is_request_response(invocation_type):
        target = payload.get("cbc_target") if isinstance(payload, dict) else None
        fault = state.faults.take(function.name, target if isinstance(target, str) else None)
    record = state.invocations.arrive(
        Invocation(
            function=function.name if function else None,
            function_name=function_name,
            payload=payload,
            received_at=received_at,
            fault=fault.describe() if fault else None,
        )
    )
    if function is None:
        return _service_error(state, record, 404, f"Function not found: {function_name}")
    if not _is_request_response(invocation_type):
        # The dispatcher must wait for the proxy's answer; an asynchronous invoke is a bug.
        message = f"the simulator accepts only RequestResponse invocations, got {invocation_type}"
        return _service_error(state, record, 400, message)
    if fault is not None:
        faulted = await _apply_fault(state, record, fault)
        if faulted is not None:
            return faulted

    problems = [parse_problem] if parse_problem else payload_problems(function, payload)
    if problems:
        return _function_error(state, record, "; ".join(problems), "InvalidPayload")
    try:
        xml = _render(function, payload)
    except ValueError as error:  # includes CapSchemaError and lxml's bad-character errors
        return _function_error(state, record, str(error), "RenderError")
    state.invocations.answer(record, "ok", 200, xml=xml)
    if fault is not None and fault.answer_delay_seconds:
        await asyncio.sleep(fault.answer_delay_seconds)
    identifier = payload.get("identifier") if isinstance(payload, dict) else None
    return responses.success({"status": "ok", "function": function.name, "identifier": identifier})


def parse_payload(body: bytes) -> tuple[Any, str | None]:
    """(parsed JSON, None), or (the raw text, a reason) when the body is not JSON.

    An empty body is `{}`, as Lambda hands a function invoked without a payload.
    """
    if not body:
        return {}, None
    try:
        return json.loads(body, parse_constant=_reject_constant), None
    except ValueError as error:
        return body.decode("utf-8", errors="replace"), f"payload: not valid JSON ({error})"


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON (and Lambda) does not.
    raise ValueError(f"{name} is not JSON")


def _is_request_response(invocation_type: str | None) -> bool:
    # Lambda's default when the header is absent is RequestResponse.
    return invocation_type in (None, "RequestResponse")


def _render(function: Function, payload: Any) -> str | None:
    if function.message_format is None:
        return None
    return RENDERERS[function.message_format.name](payload).decode("utf-8")


async def _apply_fault(state: SimulatorState, record: Invocation, fault: Fault) -> Response | None:
    """The faulty answer, or None when the fault only delays a normal answer."""
    if fault.delay_seconds:
        await asyncio.sleep(fault.delay_seconds)
    if fault.hang:
        state.invocations.mark_hanging(record)
        await state.faults.hold()
        # Only a reset gets here, and it has already dropped this record.
        return _service_error(state, record, 503, "hang released by a simulator reset")
    if fault.http_status is not None:
        message = f"injected fault: HTTP {fault.http_status}"
        return _service_error(state, record, fault.http_status, message)
    if fault.function_error is not None:
        return _function_error(state, record, fault.function_error, fault.error_type)
    return None


def _service_error(
    state: SimulatorState, record: Invocation, status: int, message: str
) -> Response:
    state.invocations.answer(record, "http_status", status, error=message)
    return responses.service_error(status, message)


def _function_error(
    state: SimulatorState, record: Invocation, message: str, error_type: str
) -> Response:
    state.invocations.answer(record, "function_error", 200, error=message)
    return responses.function_error(message, error_type)

"""Fault injection: make the next calls of one function fail, slow down, or hang.

A test registers a fault with `POST /_simulator/faults`:

    {"function": "ee-1-proxy",          # name without the deployment prefix
     "http_status": 500,                # answer with this HTTP error status, or
     "function_error": "boom",          # answer 200 + X-Amz-Function-Error (errorMessage "boom")
     "error_type": "SimulatedFunctionError",   # optional errorType for function_error
     "delay_seconds": 1.5,              # wait this long first, then answer (with the fault if any)
     "answer_delay_seconds": 60,        # take the message at once (recorded "ok"), answer this late
     "hang": true,                      # never answer until POST /_simulator/reset
     "cbc_target": "cbc_a",             # only calls for this CBC; absent means every call
     "times": 2}                        # for the next 2 calls; absent means every call

Faults for one function queue in registration order and are taken one call at a time when the
call arrives: the first registered that matches the call's `cbc_target` is consumed first (a
fault with a `cbc_target` is one route down: that Lambda and that CBC; a call that names no
`cbc_target` meets only faults that name none). A fault without `times` never runs out,
so anything queued behind it never applies until a reset.

Delays and hangs are asyncio waits, never blocking sleeps, so the server keeps answering other
calls meanwhile. `answer_delay_seconds` is the network having the message while the dispatcher has no ACK yet:
what a dispatcher killed then must survive (it sends again, with the same identifier). A hang waits on an asyncio.Event that `reset` sets, which releases every held
call at once.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Collection

from simulator.payload_rules import CBC_TARGETS

DEFAULT_ERROR_TYPE = "SimulatedFunctionError"
MAX_DELAY_SECONDS = 300.0


@dataclass(frozen=True)
class Fault:
    http_status: int | None = None
    function_error: str | None = None
    error_type: str = DEFAULT_ERROR_TYPE
    delay_seconds: float = 0.0
    answer_delay_seconds: float = 0.0
    hang: bool = False
    cbc_target: str | None = None  # None: calls for either CBC
    times: int | None = None  # None: every call until reset

    def describe(self) -> dict[str, Any]:
        """The fields that were set, for the invocation record."""
        defaults = Fault()
        return {k: v for k, v in asdict(self).items() if v != getattr(defaults, k)}


class FaultRequestError(ValueError):
    """A fault request that cannot be honoured; `reasons` says why, one per problem."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


def parse_fault(body: Any, known_functions: Collection[str]) -> tuple[str, Fault]:
    """The (function, Fault) a request body asks for; raises FaultRequestError otherwise."""
    if not isinstance(body, dict):
        raise FaultRequestError(["body: expected a JSON object"])
    reasons = []
    unknown_keys = sorted(set(body) - {"function", *Fault.__dataclass_fields__})
    reasons += [f"{key}: not a fault option" for key in unknown_keys]
    function = body.get("function")
    if function not in known_functions:
        reasons.append(
            f"function: expected one of {', '.join(sorted(known_functions))}, got {function!r}"
        )
    options = {k: v for k, v in body.items() if k in Fault.__dataclass_fields__}
    reasons += _option_problems(options)
    if reasons:
        raise FaultRequestError(reasons)
    return function, Fault(**options)


def _option_problems(options: dict[str, Any]) -> list[str]:
    reasons = []
    status = options.get("http_status")
    if status is not None and not (_is_int(status) and 400 <= status <= 599):
        reasons.append(f"http_status: expected an integer from 400 to 599, got {status!r}")
    for key in ("function_error", "error_type"):
        if key in options and not (isinstance(options[key], str) and options[key]):
            reasons.append(f"{key}: expected a non-empty string, got {options[key]!r}")
    for key in ("delay_seconds", "answer_delay_seconds"):
        value = options.get(key, 0.0)
        if not (_is_number(value) and 0 <= value <= MAX_DELAY_SECONDS):
            reasons.append(f"{key}: expected 0 to {MAX_DELAY_SECONDS:g}, got {value!r}")
    target = options.get("cbc_target")
    if target is not None and target not in CBC_TARGETS:
        reasons.append(f"cbc_target: expected one of {', '.join(CBC_TARGETS)}, got {target!r}")
    if not isinstance(options.get("hang", False), bool):
        reasons.append(f"hang: expected true or false, got {options['hang']!r}")
    times = options.get("times")
    if times is not None and not (_is_int(times) and times >= 1):
        reasons.append(f"times: expected a positive integer, got {times!r}")
    if reasons:
        return reasons

    answers = [k for k in ("http_status", "function_error") if options.get(k) is not None]
    if len(answers) > 1:
        reasons.append("http_status and function_error: choose one way to fail")
    if "error_type" in options and not answers == ["function_error"]:
        reasons.append("error_type: only meaningful with function_error")
    delay = options.get("delay_seconds", 0.0)
    answer_delay = options.get("answer_delay_seconds", 0.0)
    if options.get("hang") and (answers or delay or answer_delay):
        reasons.append("hang: never answers, so it cannot be combined with another effect")
    if answer_delay and answers:
        reasons.append("answer_delay_seconds: delays a successful answer, so it cannot be combined with a failure")
    if not (answers or delay or answer_delay or options.get("hang")):
        reasons.append(
            "fault has no effect: give http_status, function_error, delay_seconds, "
            "answer_delay_seconds or hang"
        )
    return reasons


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Faults:
    """Per-function queues of pending faults, and the event that releases hanging calls."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, deque[list]] = {}  # function -> deque of [fault, calls left]
        self._release = asyncio.Event()

    def add(self, function: str, fault: Fault) -> int:
        """Queue `fault` behind any others for `function`; returns how many are now queued."""
        with self._lock:
            queue = self._queues.setdefault(function, deque())
            queue.append([fault, fault.times])
            return len(queue)

    def take(self, function: str, cbc_target: str | None = None) -> Fault | None:
        """The fault that applies to this call of `function` for `cbc_target`, using up one of
        its `times`."""
        with self._lock:
            queue = self._queues.get(function) or deque()
            entry = next((e for e in queue if e[0].cbc_target in (None, cbc_target)), None)
            if entry is None:
                return None
            fault, left = entry
            if left is not None:
                entry[1] = left - 1
                if entry[1] == 0:
                    queue.remove(entry)
            return fault

    def pending(self) -> dict[str, list[dict[str, Any]]]:
        """Queued faults per function, with how many calls each has left (null: unlimited)."""
        with self._lock:
            return {
                function: [{**fault.describe(), "calls_left": left} for fault, left in queue]
                for function, queue in self._queues.items()
                if queue
            }

    async def hold(self) -> None:
        """Wait until the next `reset`."""
        await self._release.wait()

    def reset(self) -> None:
        """Forget every fault and release every call held by a hang."""
        with self._lock:
            self._queues.clear()
            self._release.set()
            # Calls that hang after this reset must wait for the next one.
            self._release = asyncio.Event()

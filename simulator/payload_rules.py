"""The simulator's own copy of the CBC proxy payload contract (docs/behaviour.md §3).

`payload_problems` answers "would a real proxy accept this?" with a list of reasons, each starting
with the key it is about (`references[0].sent: ...`), so a failing test or a recorded invocation
says exactly what the product got wrong. An empty list means the payload is valid.

This is deliberately a second, independent reading of the contract: it shares no code with the
product's payload builder, so a bug there cannot validate itself here.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any

from simulator.functions import Function, MessageFormat

MESSAGE_TYPES = ("alert", "update", "cancel", "test")
CHANNELS = ("test", "operator", "severe", "government")

_ALERT_KEYS = frozenset(
    {
        "message_type",
        "identifier",
        "message_format",
        "headline",
        "description",
        "areas",
        "sent",
        "expires",
        "language",
        "channel",
    }
)
# Keys every payload of that type carries, before `message_number` (numbered formats only).
KEYS_BY_TYPE: dict[str, frozenset[str]] = {
    "alert": _ALERT_KEYS,
    "update": _ALERT_KEYS | {"references"},
    "cancel": frozenset({"message_type", "identifier", "message_format", "references", "sent"}),
    "test": frozenset({"message_type", "identifier", "message_format"}),
}

# The CBC behind the proxy a call is for; optional, since a proxy with one CBC needs no choice.
CBC_TARGETS = ("cbc_a", "cbc_b")
OPTIONAL_KEYS = frozenset({"cbc_target"})

_UUID = re.compile(r"^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$", re.IGNORECASE)
_CAP_DATETIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d-00:00$")
_HEX = re.compile(r"^[0-9a-f]{8,}$")


def payload_problems(function: Function, payload: Any) -> list[str]:
    """Every reason `function` would reject `payload`; empty when it is valid.

    The canary accepts any JSON value. A proxy function needs a JSON object whose keys and
    values follow docs/behaviour.md §3 for its message format.
    """
    fmt = function.message_format
    if fmt is None:
        return []
    if not isinstance(payload, dict):
        return [f"payload: expected a JSON object, got {type(payload).__name__}"]
    message_type = payload.get("message_type")
    if message_type not in MESSAGE_TYPES:
        return [f"message_type: expected one of {', '.join(MESSAGE_TYPES)}, got {message_type!r}"]

    expected = KEYS_BY_TYPE[message_type] | ({"message_number"} if fmt.numbered else set())
    problems = _key_problems(function, fmt, message_type, expected, payload)
    # Values are checked only under keys that belong here; a stray key is reported once above.
    for key in sorted((expected | OPTIONAL_KEYS) & payload.keys()):
        check = _VALUE_CHECKS.get(key)
        if check is not None:
            problems.extend(check(key, payload[key], fmt))
    return problems


def _key_problems(
    function: Function, fmt: MessageFormat, message_type: str, expected: frozenset, payload: dict
) -> list[str]:
    missing = sorted(expected - payload.keys())
    problems = [f"{key}: missing from {message_type} payload" for key in missing]
    for key in sorted(payload.keys() - expected - OPTIONAL_KEYS):
        if key == "message_number":
            problems.append(
                f"message_number: must be absent for {function.name} ({fmt.name} format)"
            )
        else:
            problems.append(f"{key}: not allowed in a {message_type} payload")
    if "message_format" in payload and payload["message_format"] != fmt.name:
        problems.append(
            f"message_format: must be {fmt.name!r} for {function.name}, "
            f"got {payload['message_format']!r}"
        )
    return problems


def _cbc_target(key: str, value: Any, fmt: MessageFormat) -> list[str]:
    if value in CBC_TARGETS:
        return []
    return [f"{key}: expected one of {', '.join(CBC_TARGETS)}, got {value!r}"]


def _identifier(key: str, value: Any, fmt: MessageFormat) -> list[str]:
    if isinstance(value, str) and _UUID.match(value):
        return []
    return [f"{key}: expected a UUID string, got {value!r}"]


def _cap_datetime(key: str, value: Any, fmt: MessageFormat | None = None) -> list[str]:
    if not (isinstance(value, str) and _CAP_DATETIME.match(value)):
        return [f"{key}: expected YYYY-MM-DDThh:mm:ss-00:00, got {value!r}"]
    try:
        datetime.strptime(value[:19], "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return [f"{key}: not a real date and time: {value!r}"]
    return []


def _language(key: str, value: Any, fmt: MessageFormat) -> list[str]:
    if value in fmt.languages:
        return []
    return [f"{key}: expected one of {', '.join(fmt.languages)} for {fmt.name}, got {value!r}"]


def _channel(key: str, value: Any, fmt: MessageFormat) -> list[str]:
    if value in CHANNELS:
        return []
    return [f"{key}: expected one of {', '.join(CHANNELS)}, got {value!r}"]


def _text(key: str, value: Any, fmt: MessageFormat) -> list[str]:
    if isinstance(value, str) and value.strip():
        return []
    return [f"{key}: expected a non-empty string, got {value!r}"]


def _message_number(key: str, value: Any, fmt: MessageFormat | None = None) -> list[str]:
    if not (isinstance(value, str) and _HEX.match(value)):
        return [f"{key}: expected at least 8 lower-case hex characters, got {value!r}"]
    # Zero padding is to 8 characters only, so a longer number never starts with 0.
    if len(value) > 8 and value.startswith("0"):
        return [f"{key}: zero-padded beyond 8 characters: {value!r}"]
    return []


def _areas(key: str, value: Any, fmt: MessageFormat) -> list[str]:
    if not isinstance(value, list) or not value:
        return [f"{key}: expected a non-empty list of {{'polygon': [...]}}, got {value!r}"]
    problems = []
    for i, area in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(area, dict) or set(area) != {"polygon"}:
            problems.append(f"{where}: expected exactly the key 'polygon', got {area!r}")
            continue
        problems.extend(_polygon(f"{where}.polygon", area["polygon"]))
    return problems


def _polygon(where: str, polygon: Any) -> list[str]:
    if not isinstance(polygon, list) or len(polygon) < 3:
        return [f"{where}: expected a list of at least 3 [lat, lon] points, got {polygon!r}"]
    problems = []
    for j, point in enumerate(polygon):
        if not (isinstance(point, list) and len(point) == 2 and all(map(_is_number, point))):
            problems.append(f"{where}[{j}]: expected [lat, lon] numbers, got {point!r}")
        elif not (-90 <= point[0] <= 90 and -180 <= point[1] <= 180):
            problems.append(f"{where}[{j}]: latitude or longitude out of range: {point!r}")
    return problems


def _is_number(value: Any) -> bool:
    # bool is an int subclass, and JSON `true` is not a coordinate.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _references(key: str, value: Any, fmt: MessageFormat) -> list[str]:
    if not isinstance(value, list) or not value:
        return [f"{key}: expected a non-empty list of earlier messages, got {value!r}"]
    expected = {"message_id", "sent"} | ({"message_number"} if fmt.numbered else set())
    problems = []
    for i, ref in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(ref, dict):
            problems.append(f"{where}: expected an object, got {ref!r}")
            continue
        for key in sorted(expected - ref.keys()):
            problems.append(f"{where}.{key}: missing")
        for key in sorted(ref.keys() - expected):
            problems.append(f"{where}.{key}: not allowed for {fmt.name}")
        if "message_id" in ref:
            problems.extend(_identifier(f"{where}.message_id", ref["message_id"], fmt))
        if "sent" in ref:
            problems.extend(_cap_datetime(f"{where}.sent", ref["sent"]))
        if "message_number" in ref and fmt.numbered:
            problems.extend(_message_number(f"{where}.message_number", ref["message_number"]))
    return problems


_VALUE_CHECKS = {
    "identifier": _identifier,
    "sent": _cap_datetime,
    "expires": _cap_datetime,
    "language": _language,
    "channel": _channel,
    "headline": _text,
    "description": _text,
    "areas": _areas,
    "references": _references,
    "message_number": _message_number,
    "cbc_target": _cbc_target,
}

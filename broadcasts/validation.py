"""docs/behaviour.md §6: what content and areas a cell broadcast can carry. Pure functions, no I/O.

Glossary: GSM-7 is the 7-bit alphabet of GSM 03.38; characters of its extension table are sent
as an escape plus a character, so they count 2. Content with any character outside GSM-7 is sent
as UCS-2 (UTF-16 code units: an emoji, outside the Basic Multilingual Plane, counts 2).
"""

from __future__ import annotations

import math
import re
import uuid
from datetime import timedelta
from typing import Any

from broadcasts.errors import InvalidInput

GSM_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_EXTENSION = set("^{}\\[~]|€\f")
WELSH_LETTERS = set("ÀÁÂÈÊËÌÍÎÏÒÓÔÙÚÛÝáâêëíîïóôúûýÿŴŵŶŷŸẀẁẂẃẄẅỲỳ")
MAX_GSM7_LENGTH = 1395
MAX_UCS2_LENGTH = 615


def is_gsm7(content: str) -> bool:
    return all(char in GSM_BASIC or char in GSM_EXTENSION for char in content)


def encoded_length(content: str) -> int:
    """Length as the network counts it: GSM-7 septets, or UCS-2 code units."""
    if is_gsm7(content):
        return sum(2 if char in GSM_EXTENSION else 1 for char in content)
    return len(content.encode("utf-16-le")) // 2


def is_welsh(content: str) -> bool:
    return any(char in WELSH_LETTERS for char in content)


def content_problems(content: object) -> list[str]:
    if not isinstance(content, str) or not content.strip():
        return ["content is empty"]
    length = encoded_length(content)
    if is_gsm7(content):
        if length > MAX_GSM7_LENGTH:
            return [f"content is {length} GSM-7 characters; the limit is {MAX_GSM7_LENGTH}"]
    elif length > MAX_UCS2_LENGTH:
        outside = sorted({char for char in content if char not in GSM_BASIC | GSM_EXTENSION})
        return [
            f"content is {length} UCS-2 characters (it has characters outside GSM-7: "
            f"{''.join(outside[:5])}); the limit is {MAX_UCS2_LENGTH}"
        ]
    return []


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def polygon_problems(polygon: object, index: int) -> list[str]:
    name = f"polygon {index + 1}"
    if not isinstance(polygon, list):
        return [f"{name} is not a list of [lat, lon] points"]
    problems = []
    for point in polygon:
        if not (isinstance(point, (list, tuple)) and len(point) == 2 and all(map(_is_number, point))):
            problems.append(f"{name} has a point that is not two numbers: {point!r}")
            continue
        lat, lon = point
        if not -90 <= lat <= 90:
            problems.append(f"{name} has latitude {lat} outside [-90, 90]")
        if not -180 <= lon <= 180:
            problems.append(f"{name} has longitude {lon} outside [-180, 180]")
    if not problems and len({tuple(point) for point in polygon}) < 3:
        problems.append(f"{name} has fewer than 3 distinct points")
    return problems


def areas_problems(areas: Any) -> list[str]:
    polygons = areas.get("simple_polygons") if isinstance(areas, dict) else None
    if not isinstance(polygons, list) or not polygons:
        return ["areas have no polygon"]
    return [problem for i, polygon in enumerate(polygons) for problem in polygon_problems(polygon, i)]


def parse_polygon(text: str) -> list[list[float]]:
    """`"lat,lon lat,lon lat,lon"` → `[[lat, lon], ...]`, raising ValueError with the reason."""
    points = []
    for pair in text.split():
        parts = pair.split(",")
        if len(parts) != 2:
            raise ValueError(f"{pair!r} is not lat,lon")
        try:
            lat, lon = (float(part) for part in parts)
        except ValueError:
            raise ValueError(f"{pair!r} is not two numbers") from None
        points.append([lat, lon])
    problems = polygon_problems(points, 0)
    if problems:
        raise ValueError("; ".join(problems))
    return points


def parse_uuid(value: str, what: str = "id") -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise InvalidInput(f"{what} {value!r} is not a UUID") from None


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """`"90s"`, `"30m"`, `"2h"`, `"1h30m"` → a timedelta, raising ValueError with the reason."""
    match = re.fullmatch(r"(?:\d+[smhd])+", text.strip().lower())
    if not match:
        raise ValueError(f"{text!r} is not a duration like 90s, 30m, 2h or 1h30m")
    seconds = sum(int(n) * _UNITS[unit] for n, unit in re.findall(r"(\d+)([smhd])", text.lower()))
    return timedelta(seconds=seconds)

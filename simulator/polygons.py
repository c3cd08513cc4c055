"""How a payload polygon becomes the text both CAP and IBAG carry.

Both formats write a polygon as space-separated `lat,lon` pairs and require the ring to be
closed (first point repeated last). Payloads may leave the ring open, so the renderers close it.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Sequence

Point = Sequence[float]


def closed_ring(points: Sequence[Point]) -> list[Point]:
    """The points with the first one appended when the last one differs from it."""
    ring = list(points)
    if list(ring[0]) != list(ring[-1]):
        ring.append(ring[0])
    return ring


def polygon_text(points: Sequence[Point]) -> str:
    """`lat,lon lat,lon ...` for the closed ring of `points`."""
    return " ".join(f"{_coordinate(lat)},{_coordinate(lon)}" for lat, lon in closed_ring(points))


def _coordinate(value: float) -> str:
    # str(1e-05) is '1e-05'; CAP and IBAG expect plain decimal degrees.
    text = str(value)
    if "e" in text or "E" in text:
        return format(Decimal(text), "f")
    return text

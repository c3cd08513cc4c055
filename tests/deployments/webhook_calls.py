"""Calling the webhook in tests: the secret, signed bodies, and an in-process caller."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
from sqlalchemy import Engine, func, select

from broadcasts.models import Base
from deployments.signing import sign

SECRET = "webhook-test-secret-0123456789abcdef"  # 36 bytes
PATH = "/broadcast-events"


class Caller:
    """Calls the app in-process over httpx's ASGI transport, in this context (which carries the
    Prefect API URL the test set)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://webhook") as client:
            return await client.request(method, path, **kwargs)

    def __call__(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return asyncio.run(self._send(method, path, **kwargs))

    def many(self, count: int, method: str, path: str, **kwargs: Any) -> list[httpx.Response]:
        async def all_at_once() -> list[httpx.Response]:
            return list(await asyncio.gather(*(self._send(method, path, **kwargs) for _ in range(count))))

        return asyncio.run(all_at_once())


def body_for(event_id: object) -> bytes:
    return json.dumps({"broadcast_event_id": str(event_id)}).encode()


def signed(body: bytes, *, secret: str = SECRET, timestamp: int | None = None) -> dict[str, str]:
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {"X-Timestamp": str(timestamp), "X-Signature": sign(secret, timestamp, body),
            "Content-Type": "application/json"}


def post(call: Caller, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return call("POST", PATH, content=body, headers=signed(body) if headers is None else headers)


def row_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {t.name: connection.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables}

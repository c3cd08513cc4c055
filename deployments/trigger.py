"""The caller's side of the webhook: a small client that asks the webhook to send one broadcast
event (`broadcasts trigger EVENT_ID`), signing the request as deployments/signing.py says.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from deployments.signing import sign

EVENTS_PATH = "/broadcast-events"
DEFAULT_URL = "http://127.0.0.1:8000"
# Long enough for the webhook's own short retries of the Prefect API to finish and answer.
REQUEST_TIMEOUT_SECONDS = 30.0


def post_event(url: str, event_id: object, secret: str | bytes) -> tuple[int, dict[str, Any]]:
    """Ask the webhook at `url` (its base URL, or the full events URL) to send one event.

    Returns the HTTP status and the JSON answer; a non-JSON answer (a proxy's error page, say) is
    returned as `{"detail": <its first 200 characters>}`. Raises `httpx.HTTPError` when the webhook
    cannot be reached at all.
    """
    endpoint = url.rstrip("/")
    if not endpoint.endswith(EVENTS_PATH):
        endpoint += EVENTS_PATH
    body = json.dumps({"broadcast_event_id": str(event_id)}).encode()
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "X-Timestamp": str(timestamp),
        "X-Signature": sign(secret, timestamp, body),
    }
    response = httpx.post(endpoint, content=body, headers=headers, timeout=REQUEST_TIMEOUT_SECONDS)
    try:
        answer = response.json()
    except ValueError:
        answer = {"detail": response.text[:200]}
    if not isinstance(answer, dict):
        answer = {"detail": answer}
    return response.status_code, answer

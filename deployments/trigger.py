"""The caller's side of the webhook: how a request is signed, and a small client that asks the
webhook to send one broadcast event (`broadcasts trigger EVENT_ID`).

The signature is the hex HMAC-SHA256, keyed with WEBHOOK_SECRET, of the timestamp (unix seconds),
a dot, and the raw body, byte for byte as sent. The same steps with curl and openssl:

    body='{"broadcast_event_id": "9a1b7c3e-0000-4000-8000-000000000001"}'
    timestamp=$(date +%s)
    signature=$(printf '%s.%s' "$timestamp" "$body" \\
        | openssl dgst -sha256 -hmac "$WEBHOOK_SECRET" -hex -r | cut -d' ' -f1)
    curl -sS -X POST http://127.0.0.1:8000/broadcast-events \\
        -H 'Content-Type: application/json' \\
        -H "X-Timestamp: $timestamp" -H "X-Signature: $signature" \\
        --data-binary "$body"

Sign the exact bytes you send (`--data-binary`, not `--data`, which strips newlines), and send
within 300 seconds of the timestamp.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import httpx

EVENTS_PATH = "/broadcast-events"
DEFAULT_URL = "http://127.0.0.1:8000"
# Long enough for the webhook's own short retries of the Prefect API to finish and answer.
REQUEST_TIMEOUT_SECONDS = 30.0


def sign(secret: str | bytes, timestamp: int | str, body: bytes) -> str:
    """Hex HMAC-SHA256 of `<timestamp>.<body>`; the timestamp is signed so a captured call cannot be
    replayed later with a fresh one."""
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


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

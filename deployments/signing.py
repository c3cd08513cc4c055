"""How a webhook call is signed and checked, for both sides: the webhook (deployments/webhook.py)
and its caller (`broadcasts trigger`, deployments/trigger.py).

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
import re
import time

from broadcasts.settings import Settings

MIN_SECRET_BYTES = 32
MAX_CLOCK_SKEW_SECONDS = 300
TIMESTAMP = re.compile(r"[0-9]{1,12}")


class SecretNotSet(Exception):
    """WEBHOOK_SECRET is missing or too short; the message says which."""


class BadSignature(Exception):
    """The call's timestamp or signature is missing, stale or wrong; the message says which."""


def secret_key(settings: Settings) -> bytes:
    """WEBHOOK_SECRET as the key, checked here for every user of it (the webhook, `serve`, `trigger`)."""
    key = settings.webhook_secret.get_secret_value().encode() if settings.webhook_secret else b""
    if not key:
        raise SecretNotSet("WEBHOOK_SECRET is not set")
    if len(key) < MIN_SECRET_BYTES:
        raise SecretNotSet(f"WEBHOOK_SECRET is {len(key)} bytes long; it must be at least {MIN_SECRET_BYTES} bytes")
    return key


def sign(key: str | bytes, timestamp: int | str, body: bytes) -> str:
    """Hex HMAC-SHA256 of `<timestamp>.<body>`; the timestamp is signed so a captured call cannot be
    replayed later with a fresh one."""
    key = key.encode() if isinstance(key, str) else key
    return hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def check_signature(key: bytes, timestamp: str | None, signature: str | None, body: bytes) -> None:
    """Raises BadSignature unless `signature` signs `body` at a `timestamp` within the allowed skew."""
    if not timestamp or not signature:
        raise BadSignature("X-Timestamp and X-Signature are required")
    if not TIMESTAMP.fullmatch(timestamp):
        raise BadSignature("X-Timestamp must be unix seconds")
    if abs(time.time() - int(timestamp)) > MAX_CLOCK_SKEW_SECONDS:
        raise BadSignature(f"X-Timestamp is more than {MAX_CLOCK_SKEW_SECONDS} s from now")
    # Starlette decodes headers as latin-1, so this round-trips any byte the caller sent.
    given = signature.strip().lower().encode("latin-1")
    if not hmac.compare_digest(sign(key, timestamp, body).encode(), given):
        raise BadSignature("the signature does not match")

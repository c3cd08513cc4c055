"""The calls the webhook rejects before it asks Prefect anything: a missing or stale signature,
malformed or wrongly shaped JSON, an unknown event, an oversized body, the wrong method or path;
and its refusals to start. No Prefect server here: the app's PREFECT_API_URL points at a recorder
that answers every request 500 and keeps it, and each test asserts that nothing reached it and no
row was written. (What the webhook answers once it does ask Prefect is in test_webhook.py.)"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings
from sqlalchemy import Engine
from starlette.requests import Request
from starlette.responses import Response

from broadcasts.settings import get_settings
from deployments import webhook
from deployments.signing import sign
from deployments.webhook import WebhookNotConfigured, create_app
from tests.deployments.webhook_calls import PATH, SECRET, Caller, body_for, post, row_counts, signed
from tests.factories import make_alert
from tests.support.asgi import serving_app
from tests.support.processes import free_port


class PrefectRecorder:
    """An ASGI app standing where Prefect's API would be: it keeps every request and answers 500."""

    def __init__(self) -> None:
        self.requests: list[str] = []

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        self.requests.append(f"{request.method} {request.url.path}")
        await Response(status_code=500)(scope, receive, send)


@pytest.fixture(scope="module")
def recorder() -> Iterator[PrefectRecorder]:
    app = PrefectRecorder()
    with serving_app(app) as url, temporary_settings(updates={PREFECT_API_URL: f"{url}/api"}):
        yield app


@pytest.fixture
def app(configure, engine, recorder):  # type: ignore[no-untyped-def]
    configure(WEBHOOK_SECRET=SECRET)
    recorder.requests.clear()
    return create_app(get_settings())


@pytest.fixture
def call(app) -> Caller:  # type: ignore[no-untyped-def]
    return Caller(app)


@pytest.fixture
def event_id(engine) -> uuid.UUID:  # type: ignore[no-untyped-def]
    return make_alert(engine)[2]


@pytest.fixture
def nothing_created(engine: Engine, recorder: PrefectRecorder):  # type: ignore[no-untyped-def]
    @contextlib.contextmanager
    def checked() -> Iterator[None]:
        rows = row_counts(engine)
        yield
        assert row_counts(engine) == rows, "a rejected call wrote a row"
        assert recorder.requests == [], f"a rejected call asked Prefect: {recorder.requests}"

    return checked


def rejected(response: httpx.Response, status: int, recorder: PrefectRecorder) -> None:
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    assert "detail" in response.json()
    assert recorder.requests == [], f"a rejected call asked Prefect: {recorder.requests}"


def test_the_recorder_sees_a_call_that_reaches_prefect(call, event_id, recorder):
    """The checks below can fail: a valid call does ask Prefect (and gets the recorder's 500)."""
    assert post(call, body_for(event_id)).status_code >= 500
    assert recorder.requests, "a valid call never reached the recorder: the tests below prove nothing"


@pytest.mark.parametrize("tamper", [
    "wrong secret", "stale timestamp", "future timestamp", "tampered body", "no signature",
    "no timestamp", "no headers", "timestamp not a number", "signature not hex", "signature not ascii",
    "signature of another timestamp",
])
def test_a_call_without_a_valid_fresh_signature_answers_401(call, event_id, tamper, nothing_created, recorder):
    body = body_for(event_id)
    now = int(time.time())
    headers = {
        "wrong secret": signed(body, secret="another-secret-another-secret-0123"),
        "stale timestamp": signed(body, timestamp=now - 301),
        "future timestamp": signed(body, timestamp=now + 330),  # well past the skew, however slow the call
        "tampered body": signed(body_for(uuid.uuid4())),
        "no signature": {"X-Timestamp": str(now)},
        "no timestamp": {"X-Signature": sign(SECRET, now, body)},
        "no headers": {},
        "timestamp not a number": {"X-Timestamp": "soon", "X-Signature": sign(SECRET, "soon", body)},
        "signature not hex": {"X-Timestamp": str(now), "X-Signature": "zz" * 32},
        "signature not ascii": {"X-Timestamp": str(now), "X-Signature": "é".encode("latin-1")},
        "signature of another timestamp": {"X-Timestamp": str(now), "X-Signature": sign(SECRET, now - 1, body)},
    }[tamper]
    with nothing_created():
        rejected(post(call, body, headers), 401, recorder)


@pytest.mark.parametrize("body", [b'{"broadcast_event_id": ', b"not json", b"\xff\xfe", b"", b"[" * 2000 + b"]" * 2000])
def test_signed_malformed_json_answers_400(call, body, nothing_created):
    with nothing_created():
        response = post(call, body)
    assert response.status_code == 400, response.text
    assert "Traceback" not in response.text


@pytest.mark.parametrize("document", [
    [], "an id", 42, None, {}, {"broadcast_event_id": "not-a-uuid"}, {"broadcast_event_id": 7},
    {"event_id": "00000000-0000-4000-8000-000000000000"},
])
def test_signed_json_of_the_wrong_shape_answers_422(call, document, nothing_created):
    with nothing_created():
        response = post(call, json.dumps(document).encode())
    assert response.status_code == 422, response.text
    assert "Traceback" not in response.text


def test_an_extra_field_answers_422_and_creates_nothing(call, event_id, nothing_created, recorder):
    body = json.dumps({"broadcast_event_id": str(event_id), "provider": "ee"}).encode()
    with nothing_created():
        rejected(post(call, body), 422, recorder)


def test_an_unknown_event_answers_404_and_creates_nothing(call, nothing_created, recorder):
    unknown = uuid.uuid4()
    with nothing_created():
        response = post(call, body_for(unknown))
    rejected(response, 404, recorder)
    assert str(unknown) in response.json()["detail"]


@pytest.mark.parametrize("declared", ["honest", "lying", "absent"])
def test_a_body_over_4_kib_answers_413_whatever_its_content_length_says(call, engine, event_id, declared, recorder):
    body = body_for(event_id) + b" " * 4097
    headers = signed(body)
    rows = row_counts(engine)
    if declared == "honest":
        response = call("POST", PATH, content=body, headers=headers)
    elif declared == "lying":
        response = call("POST", PATH, content=body, headers={**headers, "Content-Length": "60"})
    else:  # streamed without a length (chunked)
        async def chunks():  # type: ignore[no-untyped-def]
            yield body[:2000]
            yield body[2000:]

        response = call("POST", PATH, content=chunks(), headers=headers)
        assert "content-length" not in response.request.headers
    rejected(response, 413, recorder)
    assert row_counts(engine) == rows


@pytest.mark.parametrize("declared", [b"\xb2", b"-1", b"lots"])  # b"\xb2" is "²", a digit to str.isdigit
def test_a_content_length_that_is_not_a_number_does_not_bypass_the_size_check(call, event_id, declared, recorder):
    body = body_for(event_id) + b" " * 4097
    rejected(call("POST", PATH, content=body, headers={**signed(body), "Content-Length": declared}), 413, recorder)


def test_a_declared_content_length_over_4_kib_is_refused_before_reading(call, event_id, recorder):
    body = body_for(event_id)
    rejected(call("POST", PATH, content=body, headers={**signed(body), "Content-Length": "999999"}), 413, recorder)


def test_wrong_method_answers_405_and_wrong_path_404(call, event_id, nothing_created):
    body = body_for(event_id)
    with nothing_created():
        assert call("GET", PATH).status_code == 405
        assert call("PUT", PATH, content=body, headers=signed(body)).status_code == 405
        assert call("POST", "/broadcast-event", content=body, headers=signed(body)).status_code == 404


def test_openapi_and_docs_are_served_at_the_defaults(call):
    schema = call("GET", "/openapi.json").json()
    assert set(schema["paths"]) == {PATH, "/healthz"}
    assert "requestBody" in schema["paths"][PATH]["post"]
    assert call("GET", "/docs").status_code == 200


@pytest.mark.parametrize("secret", [None, "", "x" * 31, "é" * 15 + "x"])  # the last: 31 bytes, 16 characters
def test_it_refuses_to_start_without_a_secret_of_at_least_32_bytes(configure, monkeypatch, secret):
    if secret is None:
        monkeypatch.delenv("WEBHOOK_SECRET", raising=False)
        configure()
    else:
        configure(WEBHOOK_SECRET=secret)
    with pytest.raises(WebhookNotConfigured, match="WEBHOOK_SECRET"):
        webhook.run("127.0.0.1", free_port())
    with pytest.raises(WebhookNotConfigured, match="WEBHOOK_SECRET"):
        create_app(get_settings())


def test_it_refuses_to_start_without_a_prefect_api_url(configure):
    """Without one the Prefect client would create runs on a throwaway in-process server, where no
    worker ever sees them."""
    configure(WEBHOOK_SECRET=SECRET)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with pytest.raises(WebhookNotConfigured, match="PREFECT_API_URL"):
            webhook.run("127.0.0.1", free_port())


def test_a_32_byte_secret_is_enough(configure):
    configure(WEBHOOK_SECRET="x" * 32)
    assert create_app(get_settings()) is not None


def test_sign_matches_the_openssl_example(event_id):
    body = body_for(event_id)
    expected = subprocess.run(
        ["openssl", "dgst", "-sha256", "-hmac", SECRET, "-hex", "-r"],
        input=b"1700000000." + body, capture_output=True, check=True,
    ).stdout.split()[0].decode()
    assert sign(SECRET, 1700000000, body) == expected

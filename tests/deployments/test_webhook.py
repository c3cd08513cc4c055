"""The webhook against the real test Prefect server and the real test database: that a repeated or
concurrent call never starts a second run, and what it answers when Prefect or the database is
down. The calls it rejects before asking Prefect (signature, size, shape, unknown event) are in
test_webhook_rejections.py, without a server."""

from __future__ import annotations

import contextlib
import http.server
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterExpectedStartTime,
)
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Cancelled, Completed
from sqlalchemy import Engine

from broadcasts.settings import get_settings
from deployments import webhook
from flows.send_broadcast_event import DEPLOYMENT_NAME as SEND_EVENT_DEPLOYMENT, FLOW_NAME as SEND_EVENT_FLOW, idempotency_key
from deployments.trigger import post_event
from deployments.webhook import create_app
from tests.factories import make_alert
from tests.support.asgi import serving_app
from tests.deployments.webhook_calls import PATH, SECRET, Caller, body_for, post, row_counts, signed
from tests.support.processes import free_port

pytestmark = [pytest.mark.prefect, pytest.mark.postgres]



@pytest.fixture(scope="module")
def deployment(prefect_server: str):  # type: ignore[no-untyped-def]
    """The deployment the webhook starts. Its runs stay Scheduled (no worker here); they are
    deleted afterwards, so a worker started by a later test never picks them up."""
    from flows.send_broadcast_event import send_broadcast_event

    started = datetime.now(timezone.utc)
    yield send_broadcast_event.to_deployment(name="send-broadcast-event").apply()
    with get_client(sync_client=True) as client:
        for run in client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[SEND_EVENT_FLOW])),
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(is_null_=False),
                expected_start_time=FlowRunFilterExpectedStartTime(after_=started),
            ),
            limit=200,
        ):
            client.delete_flow_run(run.id)


@pytest.fixture
def app(configure, engine, deployment):  # type: ignore[no-untyped-def]
    configure(WEBHOOK_SECRET=SECRET)
    return create_app(get_settings())


@pytest.fixture
def call(app) -> Caller:  # type: ignore[no-untyped-def]
    return Caller(app)


@pytest.fixture
def event_id(engine) -> uuid.UUID:  # type: ignore[no-untyped-def]
    return make_alert(engine)[2]


def deployment_runs() -> list[Any]:
    """Every flow run created from a deployment of send-broadcast-event, however it was created
    (with or without the idempotency key)."""
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[SEND_EVENT_FLOW])),
            flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(is_null_=False)),
            limit=200,
        )


def runs_for(event_id: object) -> list[Any]:
    return [run for run in deployment_runs() if run.parameters.get("broadcast_event_id") == str(event_id)]


@contextlib.contextmanager
def nothing_created(engine: Engine) -> Iterator[None]:
    rows, runs = row_counts(engine), {run.id for run in deployment_runs()}
    yield
    assert row_counts(engine) == rows, "a rejected call wrote a row"
    assert {run.id for run in deployment_runs()} == runs, "a rejected call created a flow run"


# --- accepted calls -------------------------------------------------------------------------------


def test_a_signed_call_for_a_known_event_creates_one_scheduled_run_and_answers_202(call, event_id):
    response = post(call, body_for(event_id))
    assert response.status_code == 202, response.text
    assert response.json() == {"flow_run_id": response.json()["flow_run_id"], "deployment": SEND_EVENT_DEPLOYMENT}
    [run] = runs_for(event_id)
    assert str(run.id) == response.json()["flow_run_id"]
    with get_client(sync_client=True) as client:
        assert run.deployment_id == client.read_deployment_by_name(SEND_EVENT_DEPLOYMENT).id
    assert run.parameters == {"broadcast_event_id": str(event_id)}
    assert run.idempotency_key == idempotency_key(event_id)
    assert run.name == f"send-broadcast-event-{event_id}"  # named as it is created, not when it starts
    assert run.state.is_scheduled()


def test_the_same_event_again_answers_the_same_run_and_creates_none(call, event_id):
    first = post(call, body_for(event_id))
    second = post(call, body_for(event_id))
    assert (first.status_code, second.status_code) == (202, 202)
    assert first.json() == second.json()
    assert len(runs_for(event_id)) == 1


@pytest.mark.sqlite
def test_twenty_concurrent_calls_for_one_event_create_one_run(call, event_id):
    body = body_for(event_id)
    responses = call.many(20, "POST", PATH, content=body, headers=signed(body))
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["flow_run_id"] for r in responses}) == 1
    [run] = runs_for(event_id)
    assert str(run.id) == responses[0].json()["flow_run_id"]


@pytest.mark.parametrize("final_state", [Completed, Cancelled])
def test_a_call_after_the_run_finished_answers_the_same_run_and_creates_none(call, event_id, final_state):
    first = post(call, body_for(event_id)).json()["flow_run_id"]
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(uuid.UUID(first), final_state(), force=True)
    again = post(call, body_for(event_id))
    assert again.status_code == 202
    assert again.json()["flow_run_id"] == first
    [run] = runs_for(event_id)
    assert run.state.type == final_state().type


def test_a_body_of_exactly_4_kib_is_accepted(call, event_id):
    body = body_for(event_id)
    body += b" " * (4096 - len(body))  # JSON allows trailing whitespace
    assert post(call, body).status_code == 202


def rejected(response: httpx.Response, status: int, event_id: object) -> None:
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    assert "detail" in response.json()
    assert runs_for(event_id) == []


def test_a_timestamp_within_300_seconds_either_way_is_accepted(call, engine):
    now = int(time.time())
    for timestamp in (now - 290, now + 290):
        event_id = make_alert(engine)[2]
        body = body_for(event_id)
        assert post(call, body, signed(body, timestamp=timestamp)).status_code == 202


# --- dependencies down ----------------------------------------------------------------------------


def test_prefect_unreachable_answers_503_with_retry_after(call, event_id):
    with temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}):
        response = post(call, body_for(event_id))
        health = call("GET", "/healthz")
    rejected(response, 503, event_id)
    assert int(response.headers["Retry-After"]) > 0
    assert health.status_code == 503
    assert health.json()["prefect"] != "ok" and health.json()["database"] == "ok"


class _AlwaysUnavailable(http.server.BaseHTTPRequestHandler):
    hits = 0

    def _answer(self) -> None:
        type(self).hits += 1
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


def test_prefect_answering_503_is_retried_a_few_times_then_answers_503(call, event_id):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AlwaysUnavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{server.server_port}/api"}):
            started = time.monotonic()
            response = post(call, body_for(event_id))
            elapsed = time.monotonic() - started
    finally:
        server.shutdown()
    rejected(response, 503, event_id)
    assert "Retry-After" in response.headers
    assert _AlwaysUnavailable.hits == webhook.PREFECT_ATTEMPTS
    assert elapsed < 5  # short back-off: the caller gets an answer quickly


def test_an_undeployed_flow_answers_503_naming_the_deployment(call, event_id, deployment):
    from flows.send_broadcast_event import send_broadcast_event

    with get_client(sync_client=True) as client:
        client.delete_deployment(client.read_deployment_by_name(SEND_EVENT_DEPLOYMENT).id)
    try:
        response = post(call, body_for(event_id))
        health = call("GET", "/healthz")
    finally:
        send_broadcast_event.to_deployment(name="send-broadcast-event").apply()
    rejected(response, 503, event_id)
    assert SEND_EVENT_DEPLOYMENT in response.json()["detail"]
    assert health.status_code == 503
    assert health.json() == {"database": "ok", "prefect": "ok", "deployment": "not found"}


def test_the_app_database_unreachable_answers_503_and_creates_nothing(configure, deployment, event_id):
    configure(WEBHOOK_SECRET=SECRET, DATABASE_URL=f"postgresql://nobody@127.0.0.1:{free_port()}/nothing")
    call = Caller(create_app(get_settings()))
    rejected(post(call, body_for(event_id)), 503, event_id)


def test_an_unexpected_error_answers_500_json_and_logs_only_its_type(call, event_id, monkeypatch, caplog):
    def broken(*args: Any) -> None:
        raise RuntimeError("Flood warning for Anytown")

    monkeypatch.setattr(webhook, "_event_exists", broken)
    with caplog.at_level(logging.DEBUG):
        response = post(call, body_for(event_id))
    rejected(response, 500, event_id)
    assert "RuntimeError" in caplog.text
    assert "Flood warning" not in caplog.text and "Flood warning" not in response.text


# --- health, docs, logs ---------------------------------------------------------------------------


def test_healthz_answers_200_when_database_prefect_and_deployment_are_ok(call):
    response = call("GET", "/healthz")
    assert response.status_code == 200
    assert response.json() == {"database": "ok", "prefect": "ok", "deployment": "ok"}


def test_healthz_with_a_bad_database_url_answers_503_naming_the_database(configure, deployment):
    configure(WEBHOOK_SECRET=SECRET, DATABASE_URL=f"postgresql://nobody@127.0.0.1:{free_port()}/nothing")
    response = Caller(create_app(get_settings()))("GET", "/healthz")
    assert response.status_code == 503
    assert response.json()["database"] != "ok"
    assert response.json()["prefect"] == "ok"


def test_logs_never_carry_the_secret_the_signature_or_the_body(call, event_id, caplog):
    body = body_for(event_id)
    headers = signed(body)
    with caplog.at_level(logging.DEBUG):
        assert post(call, body, headers).status_code == 202
        assert post(call, body, {**headers, "X-Signature": "0" * 64}).status_code == 401
        assert post(call, b"not json", signed(b"not json")).status_code == 400
    assert caplog.records, "expected at least the access lines"
    for secret_text in (SECRET, headers["X-Signature"], body.decode(), "not json"):
        assert secret_text not in caplog.text


# --- starting and the client ----------------------------------------------------------------------


def test_post_event_against_a_real_server(app, engine):
    with serving_app(app) as url:
        event_id = make_alert(engine)[2]
        status, answer = post_event(url, event_id, SECRET)
        assert status == 202, answer
        assert post_event(url, event_id, SECRET) == (202, answer)
        assert post_event(url, uuid.uuid4(), SECRET)[0] == 404
        assert post_event(url, event_id, "wrong-secret-wrong-secret-wrong-secret")[0] == 401
        assert [str(run.id) for run in runs_for(event_id)] == [answer["flow_run_id"]]

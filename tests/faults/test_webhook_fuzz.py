"""The webhook under hostile input, against the real test Prefect server and the real test
database: random bodies (binary, unicode, JSON of random shapes, sizes around 4 KiB, random ids),
random, missing or garbled X-Timestamp and X-Signature, random content types.

- Never a 5xx (the database and Prefect are up: nothing here may surprise the app).
- A call without a valid signature never creates a flow run, and answers 401 (or 413 when the
  body is too big to be read at all).
- A validly signed call answers only 202, 400, 404, 413 or 422, and a run exists only when the
  body named a known event, in which case the answer is that run.
"""

from __future__ import annotations

import hmac
import json
import re
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterExpectedStartTime,
)

from broadcasts.settings import get_settings
from flows.send_broadcast_event import FLOW_NAME as SEND_EVENT_FLOW
from deployments.signing import sign
from deployments.webhook import create_app
from tests.factories import make_alert

pytestmark = [pytest.mark.faults, pytest.mark.prefect, pytest.mark.postgres]

SECRET = "fuzz-webhook-secret-0123456789abcdef"
PATH = "/broadcast-events"
KNOWN = "known-event"  # placeholder a strategy puts where the example's fresh event id goes
FUZZ = settings(derandomize=True, max_examples=60, deadline=None, phases=[Phase.explicit, Phase.generate],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def deployment(prefect_server: str):  # type: ignore[no-untyped-def]
    """The deployment the webhook starts; its runs stay Scheduled (no worker) and are deleted after."""
    from flows.send_broadcast_event import send_broadcast_event

    started = datetime.now(timezone.utc)
    yield send_broadcast_event.to_deployment(name="send-broadcast-event").apply()
    with get_client(sync_client=True) as client:
        for run in client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[SEND_EVENT_FLOW])),
            flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(is_null_=False),
                                          expected_start_time=FlowRunFilterExpectedStartTime(after_=started)),
            limit=200,
        ):
            client.delete_flow_run(run.id)
    while _prefect:
        _prefect.pop().__exit__(None, None, None)


@pytest.fixture
def client(configure, engine, deployment):  # type: ignore[no-untyped-def]
    configure(WEBHOOK_SECRET=SECRET)
    with TestClient(create_app(get_settings()), raise_server_exceptions=False) as test_client:
        yield test_client


_prefect: list[Any] = []  # one client for the module: opening one per read costs more than the read


def deployment_runs() -> list[Any]:
    """Every run of the deployment, however it was created."""
    if not _prefect:
        _prefect.append(get_client(sync_client=True).__enter__())
    return _prefect[0].read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=[SEND_EVENT_FLOW])),
        flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(is_null_=False)),
        limit=200,
    )


# --- bodies -----------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=20), inner, max_size=5),
    max_leaves=25,
)
event_ids = st.sampled_from([KNOWN]) | st.uuids().map(str) | st.text(max_size=50) | json_values
bodies = st.one_of(
    st.binary(max_size=600),
    st.binary(min_size=4000, max_size=4200),
    st.text(max_size=300).map(str.encode),
    json_values.map(lambda v: json.dumps(v).encode()),
    # the right key with random ids, sometimes with extra fields
    st.tuples(event_ids, st.dictionaries(st.text(max_size=10), json_values, max_size=2)).map(
        lambda t: json.dumps({"broadcast_event_id": t[0], **t[1]}).encode()),
    # a well-formed request padded with whitespace to around 4 KiB (JSON allows it)
    st.tuples(event_ids, st.integers(4080, 4110)).map(
        lambda t: json.dumps({"broadcast_event_id": t[0]}).encode().ljust(t[1])),
    st.just(KNOWN.encode()),  # the canonical request for the example's event
)

# --- headers ---------------------------------------------------------------------------------------

header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"), max_size=80)
content_types = st.none() | st.sampled_from(
    ["application/json", "text/plain", "application/octet-stream", "multipart/form-data; boundary=x",
     "application/x-www-form-urlencoded", "application/json; charset=utf-16"]) | header_text


def _timestamps(now: int) -> st.SearchStrategy[str | None]:
    return st.one_of(
        st.none(), header_text, st.integers(-(10**13), 10**13).map(str),
        st.integers(-400, 400).map(lambda skew: str(now + skew)),
        st.sampled_from([f" {now}", f"{now}.0", f"+{now}", "0" * 13, str(now) + "\u00b2"]),
    )


signatures = st.one_of(
    st.none(), header_text, st.binary(min_size=32, max_size=32).map(bytes.hex),
    st.just("valid"),  # replaced by the right signature for the example's timestamp and body
    st.just("valid-other-body"), st.just("valid-other-secret"),
)


def _latin1(value: str) -> bytes:
    return value.encode("latin-1")


def _resolve(body: bytes, event_id: uuid.UUID) -> bytes:
    if body == KNOWN.encode():
        return json.dumps({"broadcast_event_id": str(event_id)}).encode()
    return body.replace(KNOWN.encode(), str(event_id).encode())


def _valid_signature(timestamp: str | None, signature: str | None, body: bytes) -> bool:
    """docs/behaviour.md §7 check 2, read from the contract."""
    if not timestamp or not signature or not re.fullmatch(r"[0-9]{1,12}", timestamp):
        return False
    if abs(time.time() - int(timestamp)) > 300:
        return False
    return hmac.compare_digest(sign(SECRET, timestamp, body), signature.strip().lower())


def _headers(timestamp: str | None, signature: str | None, content_type: str | None) -> dict[str, bytes]:
    headers = {"X-Timestamp": timestamp, "X-Signature": signature, "Content-Type": content_type}
    return {name: _latin1(value) for name, value in headers.items() if value is not None}


def _the_event(body: bytes, event_id: uuid.UUID) -> bool:
    """Whether the body names exactly the known event (parsed the way any JSON reader would)."""
    try:
        document = json.loads(body)
        return set(document) == {"broadcast_event_id"} and uuid.UUID(str(document["broadcast_event_id"])) == event_id
    except Exception:
        return False


def _call(client: TestClient, engine, body: bytes, timestamp, signature, content_type):  # type: ignore[no-untyped-def]
    event_id = make_alert(engine)[2]  # a fresh event: any run for it was made by this call
    body = _resolve(body, event_id)
    if signature is not None and signature.startswith("valid") and timestamp is not None:
        signed = body if signature == "valid" else body + b" "
        signature = sign(SECRET if signature != "valid-other-secret" else SECRET[::-1], timestamp, signed)
    before = {run.id for run in deployment_runs()}
    response = client.post(PATH, content=body, headers=_headers(timestamp, signature, content_type))
    created = [run for run in deployment_runs() if run.id not in before]
    return event_id, body, timestamp, signature, response, created


def _describe(body: bytes, timestamp: Any, signature: Any, response: Any) -> str:
    return (f"body {body[:120]!r}... ({len(body)} bytes), X-Timestamp {timestamp!r}, X-Signature {signature!r}"
            f" -> {response.status_code} {response.text[:200]}")


@FUZZ
@given(body=bodies, timestamp=st.data(), signature=signatures, content_type=content_types)
def test_hostile_calls_never_5xx_and_never_start_a_run_without_a_valid_signature(
        client, engine, body, timestamp, signature, content_type):
    timestamp = timestamp.draw(_timestamps(int(time.time())), label="X-Timestamp")
    event_id, body, timestamp, signature, response, created = _call(
        client, engine, body, timestamp, signature, content_type)
    what = _describe(body, timestamp, signature, response)
    assert response.status_code < 500, what
    assert "Traceback" not in response.text, what
    if not _valid_signature(timestamp, signature, body):
        assert created == [], f"a call without a valid signature created {len(created)} run(s): {what}"
        assert response.status_code == (413 if len(body) > 4096 else 401), what
    else:
        _check_signed(event_id, body, response, created, what)


@FUZZ
@given(body=bodies, skew=st.integers(-290, 290), content_type=content_types)
def test_validly_signed_random_bodies_start_a_run_only_for_a_known_event(client, engine, body, skew, content_type):
    timestamp = str(int(time.time()) + skew)
    event_id, body, timestamp, signature, response, created = _call(
        client, engine, body, timestamp, "valid", content_type)
    what = _describe(body, timestamp, signature, response)
    assert _valid_signature(timestamp, signature, body) or len(body) > 4096, what
    _check_signed(event_id, body, response, created, what)


def _check_signed(event_id: uuid.UUID, body: bytes, response: Any, created: list[Any], what: str) -> None:
    assert response.status_code in (202, 400, 404, 413, 422), what
    if len(body) > 4096:
        assert response.status_code == 413, what
    else:
        try:
            json.loads(body)
        except (ValueError, RecursionError):
            assert response.status_code == 400, what
    if response.status_code == 202:
        assert _the_event(body, event_id), f"202 for a body that does not name the example's event: {what}"
        assert [str(run.id) for run in created] == [response.json()["flow_run_id"]], what
        assert created[0].parameters == {"broadcast_event_id": str(event_id)}, what
    else:
        assert created == [], f"a {response.status_code} created {len(created)} run(s): {what}"
        assert not (_the_event(body, event_id) and len(body) <= 4096), f"the known event was refused: {what}"

"""The one-provider step without Prefect: who may be sent to, what ends a send, what is retried."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import update

from broadcasts import dao, dispatch
from broadcasts.cbc_proxy import get_proxy
from broadcasts.db import get_engine, unit_of_work
from broadcasts.errors import AllRoutesFailed, DatabaseUnavailable, ProviderNotAvailable, ServiceNotLive
from broadcasts.models import Service, utcnow
from broadcasts.settings import get_settings
from tasks.send_to_provider import should_retry
from tests.factories import make_alert
from tests.flows.helpers import provider_message_count, statuses


def send(engine, event_id, provider="ee", enabled=("ee", "three", "o2", "vodafone")):  # type: ignore[no-untyped-def]
    return dispatch.send_once(engine, get_proxy(get_settings()), event_id, provider,
                                     headline="h", enabled=list(enabled))


def test_a_provider_outside_the_services_list_is_refused_without_a_call(environment, engine, sim):
    _, _, event_id = make_alert(engine, providers=["vodafone"])
    with pytest.raises(ProviderNotAvailable, match="may not use ee"):
        send(engine, event_id, "ee")
    with pytest.raises(ProviderNotAvailable):
        send(engine, event_id, "vodafone", enabled=["ee"])
    assert sim.invocations() == []
    found = statuses(engine, event_id)  # the refusal is recorded, and no identifier allocated
    assert {p: (s.status, s.identifier) for p, s in found.items()} == {"ee": ("refused", None), "vodafone": ("refused", None)}
    assert "may not use ee" in found["ee"].last_error
    assert provider_message_count(engine, event_id) == 0


def test_a_service_that_stops_being_live_ends_a_retrying_send_with_the_reason(environment, engine, sim):
    service_id, _, event_id = make_alert(engine)
    sim.fault("ee-1-proxy", http_status=500, times=2)
    sim.fault("ee-2-proxy", http_status=500, times=2)
    with pytest.raises(AllRoutesFailed):
        send(engine, event_id)
    with unit_of_work(engine) as session:
        session.execute(update(Service).where(Service.id == service_id).values(restricted=True))
    with pytest.raises(ServiceNotLive):
        send(engine, event_id)
    ee = statuses(engine, event_id)["ee"]
    assert ee.status == "technical-failure" and "restricted" in ee.last_error
    assert len(sim.invocations()) == 4  # one failed attempt: four routes


def test_an_unreachable_database_is_a_retryable_failure(environment, sim):
    engine = get_engine("postgresql://postgres@127.0.0.1:1/nowhere")
    with pytest.raises(DatabaseUnavailable) as raised:
        send(engine, uuid.uuid4())
    assert raised.value.provider == "ee"
    assert should_retry(None, None, SimpleNamespace(data=raised.value))


def test_retries_stopped_by_expiry_end_the_message_as_expired_while_retrying(environment, engine, sim):
    _, _, event_id = make_alert(engine)
    sim.fault("ee-1-proxy", http_status=500, times=2)
    sim.fault("ee-2-proxy", http_status=500, times=2)
    with pytest.raises(AllRoutesFailed) as raised:
        send(engine, event_id)
    error = raised.value
    assert (error.event_id, error.provider) == (event_id, "ee")
    error.expires_at = utcnow() - timedelta(seconds=1)  # as if the event expired meanwhile
    assert should_retry(None, None, SimpleNamespace(data=error)) is False
    ee = statuses(engine, event_id)["ee"]
    assert ee.status == "technical-failure" and "expired while retrying" in ee.last_error


def test_an_acknowledged_message_is_never_given_another_status(environment, engine, sim):
    _, _, event_id = make_alert(engine)
    send(engine, event_id)
    with unit_of_work(engine) as session:
        message = dao.get_provider_message(session, event_id, "ee")
        assert dao.append_status(session, message, "technical-failure", detail={"error": "late"}) is None
    ee = statuses(engine, event_id)["ee"]
    assert ee.status == "returned-ack" and [h.status for h in ee.history] == ["sending", "returned-ack"]


class SlowFailingPrimary:
    """A Lambda client whose primary times out slowly; records what it was asked to call."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def invoke(self, FunctionName: str, **_kwargs):  # type: ignore[no-untyped-def]  # noqa: N803
        from botocore.exceptions import ReadTimeoutError

        self.calls.append(FunctionName)
        time.sleep(0.3)
        raise ReadTimeoutError(endpoint_url="http://proxy")


def test_no_further_route_is_started_after_the_deadline():
    from broadcasts.cbc_proxy import CBCProxy
    from broadcasts.providers import PROVIDERS

    client = SlowFailingPrimary()
    proxy = CBCProxy(client)
    with pytest.raises(AllRoutesFailed) as raised:
        proxy.send(proxy.routes(PROVIDERS["ee"]), {"message_type": "test"}, deadline=utcnow() + timedelta(seconds=0.1))
    assert client.calls == ["ee-1-proxy"]
    assert raised.value.failures[1:] == [
        {"function": function, "cbc_target": target, "error": "not tried: the event expired"}
        for function, target in (("ee-1-proxy", "cbc_b"), ("ee-2-proxy", "cbc_a"), ("ee-2-proxy", "cbc_b"))]

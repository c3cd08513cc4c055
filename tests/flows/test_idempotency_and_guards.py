"""Exactly once per provider, whatever runs it; and the checks that stop a send before any call."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from sqlalchemy import update

from broadcasts import dispatch
from broadcasts.cbc_proxy import get_proxy
from broadcasts.db import unit_of_work
from broadcasts.errors import AllRoutesFailed, ServiceNotLive
from broadcasts.models import Service, utcnow
from broadcasts.settings import get_settings
from flows.send_broadcast_event import send_broadcast_event
from tests.conftest import PROJECT_ROOT
from tests.factories import make_alert, make_event, make_message, make_service
from tests.flows.helpers import calls_for, in_thread, provider_message_count, run_event, run_replay, statuses

pytestmark = pytest.mark.usefixtures("prefect_server")


def _functions(sim) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(c["function"] for c in sim.invocations())


def test_running_the_event_flow_twice_sends_once_per_provider(configure, engine, sim):
    configure(ENABLED_CBCS="ee,vodafone")
    _, _, event_id = make_alert(engine)
    first, second = run_event(event_id), run_event(event_id)
    assert first.is_completed() and second.is_completed()
    assert _functions(sim) == ["ee-1-proxy", "vodafone-1-proxy"]


@pytest.mark.sqlite
def test_the_one_provider_flow_alongside_the_event_flow_sends_once(configure, engine, sim):
    configure(ENABLED_CBCS="ee,vodafone")
    sim.fault("ee-1-proxy", delay_seconds=0.5)  # keep the first call in flight while both run
    _, _, event_id = make_alert(engine)
    states = {}
    runs = [
        in_thread(lambda: states.setdefault("event", run_event(event_id))),
        in_thread(lambda: states.setdefault("replay", run_replay(event_id, "ee"))),
    ]
    for run in runs:
        run.join(60)
    assert states["event"].is_completed() and states["replay"].is_completed(), states
    assert _functions(sim) == ["ee-1-proxy", "vodafone-1-proxy"]
    assert provider_message_count(engine, event_id) == 2


def test_rerunning_after_a_partial_failure_sends_only_to_unacknowledged_providers(configure, engine, sim):
    configure(ENABLED_CBCS="ee,o2,vodafone")
    _, _, event_id = make_alert(engine)
    settings = get_settings()
    # An earlier run: o2 and vodafone acknowledged, ee failed on both routes.
    for provider in ("o2", "vodafone"):
        dispatch.send_once(engine, get_proxy(settings), event_id, provider, headline="h",
                                  enabled=settings.enabled_cbcs)
    sim.fault("ee-1-proxy", http_status=500, times=2)
    sim.fault("ee-2-proxy", http_status=500, times=2)
    with pytest.raises(AllRoutesFailed):
        dispatch.send_once(engine, get_proxy(settings), event_id, "ee", headline="h",
                                  enabled=settings.enabled_cbcs)
    before = len(sim.invocations())

    assert run_event(event_id).is_completed()

    rerun = sim.invocations()[before:]
    assert [c["function"] for c in rerun] == ["ee-1-proxy"]
    assert rerun[0]["payload"]["identifier"] == str(statuses(engine, event_id)["ee"].identifier)
    assert {s.status for s in statuses(engine, event_id).values()} == {"returned-ack"}


CRASHING_SEND = """
import sys, uuid
from broadcasts import dispatch
from broadcasts.cbc_proxy import get_proxy
from broadcasts.db import get_engine
from broadcasts.settings import get_settings
settings = get_settings()
dispatch.send_once(get_engine(settings.database_url), get_proxy(settings),
                          uuid.UUID(sys.argv[1]), "ee", headline=settings.broadcast_headline,
                          enabled=settings.enabled_cbcs)
"""


@pytest.mark.sqlite
def test_a_run_killed_after_calling_the_proxy_is_replayed_with_the_same_identifier(configure, engine, sim):
    configure(ENABLED_CBCS="ee")
    _, _, event_id = make_alert(engine)
    sim.fault("ee-1-proxy", delay_seconds=30, times=1)  # the proxy has the call; no answer yet
    process = subprocess.Popen([sys.executable, "-c", CRASHING_SEND, str(event_id)], cwd=PROJECT_ROOT, env=os.environ.copy())
    deadline = time.monotonic() + 30
    while not sim.invocations() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sim.invocations(), "the crashing run never reached the proxy"
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    first = sim.invocations()[0]["payload"]["identifier"]
    assert statuses(engine, event_id)["ee"].status == "sending"  # the ACK was never recorded

    state = run_replay(event_id, "ee")

    assert state.is_completed(), state.message
    replayed = [c for c in sim.invocations() if c["outcome"] == "ok"]
    assert [c["payload"]["identifier"] for c in replayed] == [first]
    assert statuses(engine, event_id)["ee"].status == "returned-ack"


@pytest.mark.parametrize(
    ("service", "stubbed", "reason"),
    [({}, True, "stubbed"), ({"active": False}, False, "inactive"), ({"restricted": True}, False, "restricted")],
    ids=["stubbed", "inactive", "restricted"],
)
def test_a_send_that_is_not_allowed_calls_nothing_and_says_why(configure, engine, sim, service, stubbed, reason):
    configure(ENABLED_CBCS="ee")
    service_id = make_service(engine, **service)
    message_id = make_message(engine, service_id, stubbed=stubbed)
    event_id = make_event(engine, service_id, message_id)
    state = run_event(event_id)
    assert state.is_failed()
    assert reason in state.message
    assert sim.invocations() == []
    assert provider_message_count(engine, event_id) == 0


def test_an_expired_event_ends_in_technical_failure_without_a_call(configure, engine, sim):
    configure(ENABLED_CBCS="ee,vodafone")
    service_id = make_service(engine)
    event_id = make_event(engine, service_id, make_message(engine, service_id),
                          finishes_at=utcnow() - timedelta(seconds=1))
    assert run_event(event_id).is_failed()
    found = statuses(engine, event_id)
    assert {p: s.status for p, s in found.items()} == {"ee": "technical-failure", "vodafone": "technical-failure"}
    assert "expired" in found["ee"].last_error and "while retrying" not in found["ee"].last_error
    assert sim.invocations() == []


@pytest.mark.parametrize(
    ("body", "polygons", "problem"),
    [
        ("a" * 1396, None, "1396 GSM-7 characters"),
        ("ŵ" * 616, None, "616 UCS-2 characters"),
        ("Flood warning", [[[51.5, -0.1], [51.5, -0.1], [51.6, 0.0]]], "fewer than 3 distinct points"),
        ("Flood warning", [[[91.0, -0.1], [51.6, -0.1], [51.6, 0.0]]], "latitude 91.0"),
    ],
    ids=["gsm-too-long", "ucs2-too-long", "degenerate-polygon", "latitude-out-of-range"],
)
def test_invalid_content_or_areas_end_in_technical_failure_without_a_call(configure, engine, sim, body, polygons, problem):
    configure(ENABLED_CBCS="ee")
    service_id = make_service(engine)
    event_id = make_event(engine, service_id, make_message(engine, service_id), body=body, polygons=polygons)
    assert run_event(event_id).is_failed()
    status = statuses(engine, event_id)["ee"]
    assert status.status == "technical-failure" and problem in status.last_error
    assert sim.invocations() == []


def test_an_acknowledged_provider_is_a_no_op_for_the_replay_flow(configure, engine, sim):
    configure(ENABLED_CBCS="ee")
    _, _, event_id = make_alert(engine)
    assert run_event(event_id).is_completed()
    assert run_replay(event_id, "ee").is_completed()
    assert len(calls_for(sim, statuses(engine, event_id)["ee"].identifier)) == 1



def test_replay_sends_nothing_when_dispatch_is_disabled_or_the_provider_is_not_available(configure, engine, sim):
    configure(ENABLED_CBCS="ee,vodafone")
    _, _, event_id = make_alert(engine, providers=["ee"])
    refused = run_replay(event_id, "vodafone")
    assert refused.is_failed() and "may not use vodafone" in refused.message
    configure(CBC_PROXY_ENABLED="false")
    assert "disabled" in run_replay(event_id, "ee").message
    assert sim.invocations() == []


def test_an_automatic_run_leaves_a_provider_refused_mid_retry_to_an_operator_and_sends_the_others(configure, engine, sim):
    configure(ENABLED_CBCS="ee,vodafone")
    service_id = make_service(engine)
    event_id = make_event(engine, service_id, make_message(engine, service_id))
    settings = get_settings()

    def send_ee() -> None:
        dispatch.send_once(engine, get_proxy(settings), event_id, "ee", headline="h", enabled=settings.enabled_cbcs)

    sim.fault("ee-1-proxy", http_status=500, times=2)
    sim.fault("ee-2-proxy", http_status=500, times=2)
    with pytest.raises(AllRoutesFailed):
        send_ee()
    _set_restricted(engine, service_id, True)  # its retry is refused: ee ends technical-failure
    with pytest.raises(ServiceNotLive):
        send_ee()
    _set_restricted(engine, service_id, False)
    identifier = statuses(engine, event_id)["ee"].identifier
    sim.reset()

    automatic = run_event(event_id)  # as the webhook, the event trigger, resume-dispatch or a UI Retry start it

    assert automatic.is_failed() and f"`broadcasts send-event {event_id}`" in automatic.message
    assert _functions(sim) == ["vodafone-1-proxy"]
    assert statuses(engine, event_id)["ee"].status == "technical-failure"

    replayed = send_broadcast_event(str(event_id), replay_failed=True, return_state=True)  # `broadcasts send-event`

    assert replayed.is_completed(), replayed.message
    assert [(c["function"], c["payload"]["identifier"]) for c in sim.invocations()[1:]] == [
        ("ee-1-proxy", str(identifier))]


def _set_restricted(engine, service_id, restricted: bool) -> None:  # type: ignore[no-untyped-def]
    with unit_of_work(engine) as session:
        session.execute(update(Service).where(Service.id == service_id).values(restricted=restricted))

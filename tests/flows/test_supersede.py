"""A cancel written while one network keeps failing the alert (docs/behaviour.md §4 rule 6), end to
end on the test Prefect server and the simulator: the alert's send to that network ends
superseded within one retry interval, its run completes (superseded is not a failure, so nothing
pages), and the cancel is acknowledged by all four networks, one identifier each, in order."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timedelta

import pytest

from broadcasts.models import SUPERSEDED, utcnow
from tasks.send_to_provider import PROVIDER_BLOCKED_EVENT
from tests.factories import make_event, make_message, make_service
from tests.flows.helpers import (
    in_thread,
    prefect_events,
    provider_message_count,
    reference,
    run_event,
    statuses,
)
from tests.support.polling import wait_until

pytestmark = pytest.mark.usefixtures("prefect_server")
ALL = ("ee", "three", "o2", "vodafone")
SCALE = 0.1  # retry intervals 0.1, 0.2, 0.4, 0.8, 1.6 … s
# Short finish times: without rule 6 the alert and the cancel would retry until then, not for an hour.
LIFETIME = timedelta(seconds=45)
SLACK = 3.0  # a retry's start-up, the cancel's own run and the alert run's end, on a busy machine
FAILURES = 16  # failing calls of each o2 proxy: 8 attempts, each calling both CBCs behind it


def _time(call: dict) -> datetime:
    return datetime.fromisoformat(call["received_at"])


def _artifact_rows(event_id) -> list[dict]:  # type: ignore[no-untyped-def]
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def latest():  # type: ignore[no-untyped-def]
        async with get_client() as client:
            return await client.read_latest_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"broadcast-event-{event_id}"])))

    [artifact] = asyncio.run(latest())
    return artifact.data if isinstance(artifact.data, list) else json.loads(artifact.data)


@pytest.mark.sqlite
def test_a_cancel_written_while_o2_keeps_failing_the_alert_supersedes_it_and_reaches_all_four(configure, engine, sim):
    configure(ENABLED_CBCS=",".join(ALL), BROADCAST_RETRY_DELAY_SCALE=str(SCALE))
    since = utcnow()
    # o2 fails the next 16 calls of each proxy (8 attempts, two CBCs behind each): the alert's (at least 3 attempts before the cancel,
    # its in-flight one, never one after it is superseded), then the cancel's first, which is retried.
    sim.fault("o2-1-proxy", http_status=500, times=FAILURES)
    sim.fault("o2-2-proxy", http_status=500, times=FAILURES)
    service_id = make_service(engine)
    message_id = make_message(engine, service_id)
    alert = make_event(engine, service_id, message_id, sent_at=utcnow(), expires_in=LIFETIME)
    states = {}
    ended = {}
    alert_run = in_thread(lambda: (states.setdefault("alert", run_event(alert)),
                                   ended.setdefault("alert", time.monotonic())))
    wait_until(lambda: (o2 := statuses(engine, alert).get("o2")) and o2.attempts >= 3, 30,
               "the alert to fail three times on o2")

    cancel = make_event(engine, service_id, message_id, message_type="cancel", sent_at=utcnow() + timedelta(seconds=1),
                        expires_in=LIFETIME)
    written, attempts = time.monotonic(), statuses(engine, alert)["o2"].attempts
    cancel_run = in_thread(lambda: states.setdefault("cancel", run_event(cancel)))
    alert_run.join(30)
    cancel_run.join(60)

    # The alert's o2 task stopped at its next attempt: within one retry interval of the cancel.
    interval = 2 ** attempts * SCALE  # the longest wait it could have been in (one more attempt may have started)
    assert not alert_run.is_alive(), "the alert's o2 send went on retrying after the cancel"
    assert states["alert"].is_completed(), states["alert"].message  # superseded is not a failure
    assert f"o2 superseded by cancel {cancel}" in states["alert"].message
    found = statuses(engine, alert)
    assert {p: s.status for p, s in found.items()} == {"ee": "returned-ack", "three": "returned-ack",
                                                       "o2": SUPERSEDED, "vodafone": "returned-ack"}
    superseded_at = found["o2"].history[-1].created_at
    assert ended["alert"] - written <= interval + SLACK, (
        f"the alert's run ended {ended['alert'] - written:.1f} s after the cancel was written; its retry interval "
        f"was at most {interval:.1f} s")
    invocations = sim.invocations()

    def calls(identifier):  # type: ignore[no-untyped-def]
        return [c for c in invocations if c["payload"].get("identifier") == str(identifier)]

    alert_calls = calls(found["o2"].identifier)
    assert len(alert_calls) >= 4 * attempts and all(c["outcome"] != "ok" for c in alert_calls)  # four routes each
    assert len(alert_calls) < 2 * FAILURES, "the alert went on being sent to o2 after the cancel"
    assert all(_time(c) <= superseded_at for c in alert_calls), "an o2 alert call started after it was superseded"
    assert [(r["provider"], r["status"]) for r in _artifact_rows(alert)] == [
        ("ee", "returned-ack"), ("three", "returned-ack"), ("o2", SUPERSEDED), ("vodafone", "returned-ack")]

    # The cancel: all four networks, one identifier each, after the alert, referring to it.
    assert states["cancel"].is_completed(), states["cancel"].message
    sent = statuses(engine, cancel)
    assert provider_message_count(engine, cancel) == 4
    assert {p: s.status for p, s in sent.items()} == {p: "returned-ack" for p in ALL}
    for provider in ALL:
        cancels = [c for c in invocations if c["function"].startswith(f"{provider}-")
                   and c["payload"]["message_type"] == "cancel"]
        assert {c["payload"]["identifier"] for c in cancels} == {str(sent[provider].identifier)}, provider
        assert cancels[-1]["outcome"] == "ok", provider  # o2's may have failed first, while o2 still failed
        assert all(c["payload"]["references"] == [reference(engine, alert, provider)] for c in cancels)
        assert all(_time(c) > _time(a) for c in cancels for a in calls(found[provider].identifier)), (
            f"{provider}: the cancel arrived before an alert call")
    assert prefect_events(PROVIDER_BLOCKED_EVENT, since) == []

"""send-broadcast-event end to end: which providers get a send, and exactly what they receive."""

from __future__ import annotations

import pytest

from broadcasts.payloads import cap_time
from tests.factories import make_alert, make_event, make_message, make_service
from tests.flows.helpers import calls_for, finishes_at, reference, run_event, sent_at, statuses

pytestmark = pytest.mark.usefixtures("prefect_server")
ALL = ("ee", "three", "o2", "vodafone")


def test_enabled_ee_and_vodafone_get_exactly_two_sends(configure, engine, sim):
    configure(ENABLED_CBCS="ee,vodafone")
    _, _, event_id = make_alert(engine)
    state = run_event(event_id)
    assert state.is_completed(), state.message
    assert sorted(c["function"] for c in sim.invocations()) == ["ee-1-proxy", "vodafone-1-proxy"]


def test_a_service_limited_to_vodafone_sends_only_to_vodafone(configure, engine, sim):
    configure(ENABLED_CBCS="ee,three,o2,vodafone")
    _, _, event_id = make_alert(engine, providers=["vodafone"])
    assert run_event(event_id).is_completed()
    assert [c["function"] for c in sim.invocations()] == ["vodafone-1-proxy"]


def test_a_service_whose_providers_are_not_enabled_sends_nothing_and_says_so(configure, engine, sim):
    configure(ENABLED_CBCS="ee,vodafone")
    _, _, event_id = make_alert(engine, providers=["three"])
    state = run_event(event_id)
    assert "no available provider" in state.message
    assert sim.invocations() == []


def test_disabled_dispatch_sends_nothing_and_never_reads_the_database(configure, sim, tmp_path):
    # A database URL that cannot be opened: any read would fail the flow.
    configure(CBC_PROXY_ENABLED="false", DATABASE_URL=f"sqlite:///{tmp_path}/missing/dir/db.sqlite")
    state = run_event("00000000-0000-4000-8000-000000000000")
    assert state.is_completed() and "disabled" in state.message
    assert sim.invocations() == []


def _expected_alert(engine, event_id, provider, channel="severe", body="Flood warning"):
    status = statuses(engine, event_id)[provider]
    cap = provider != "vodafone"
    payload = {
        "message_type": "alert", "identifier": str(status.identifier),
        "message_format": "cap" if cap else "ibag", "headline": "GOV.UK Notify Broadcast",
        "description": body,
        "areas": [{"polygon": [[51.50, -0.12], [51.52, -0.12], [51.52, -0.10], [51.50, -0.10]]}],
        "sent": cap_time(sent_at(engine, event_id)),
        "expires": cap_time(finishes_at(engine, event_id)), "language": "en-GB" if cap else "English",
        "channel": channel,
    }
    if not cap:
        payload["message_number"] = status.message_number
    return payload


@pytest.mark.sqlite
def test_alert_update_and_cancel_reach_every_provider_with_the_spec_payloads(configure, engine, sim):
    configure(ENABLED_CBCS=",".join(ALL))
    service_id = make_service(engine, channel="severe")
    message_id = make_message(engine, service_id)
    alert = make_event(engine, service_id, message_id)
    assert run_event(alert).is_completed()
    update = make_event(engine, service_id, message_id, message_type="update", body="Flood warning: updated")
    assert run_event(update).is_completed()
    cancel = make_event(engine, service_id, message_id, message_type="cancel")
    assert run_event(cancel).is_completed()

    for provider in ALL:
        by_event = {e: statuses(engine, e)[provider] for e in (alert, update, cancel)}
        for event_id, status in by_event.items():
            assert status.status == "returned-ack"
            assert [h.status for h in status.history] == ["sending", "returned-ack"]
            calls = calls_for(sim, status.identifier)
            assert len(calls) == 1 and calls[0]["outcome"] == "ok", provider
        alert_payload = calls_for(sim, by_event[alert].identifier)[0]["payload"]
        # Every route answers, so each call is on the first route: (Lambda 1, cbc_a).
        assert alert_payload == {**_expected_alert(engine, alert, provider), "cbc_target": "cbc_a"}
        update_payload = calls_for(sim, by_event[update].identifier)[0]["payload"]
        assert update_payload.pop("references") == [reference(engine, alert, provider)]
        assert update_payload == {
            **_expected_alert(engine, update, provider, body="Flood warning: updated"),
            "message_type": "update", "cbc_target": "cbc_a",
        }
        cancel_payload = calls_for(sim, by_event[cancel].identifier)[0]["payload"]
        expected_cancel = {
            "message_type": "cancel", "identifier": str(by_event[cancel].identifier),
            "message_format": "ibag" if provider == "vodafone" else "cap",
            "references": [reference(engine, alert, provider), reference(engine, update, provider)],
            "sent": cap_time(sent_at(engine, cancel)), "cbc_target": "cbc_a",
        }
        if provider == "vodafone":
            expected_cancel["message_number"] = by_event[cancel].message_number
        assert cancel_payload == expected_cancel


def test_welsh_content_is_sent_with_the_welsh_language_values(configure, engine, sim):
    configure(ENABLED_CBCS="ee,vodafone")
    service_id = make_service(engine)
    event_id = make_event(engine, service_id, make_message(engine, service_id),
                          body="Rhybudd llifogydd: ewch i dir uwch. Peidiwch â gyrru.")
    assert run_event(event_id).is_completed()
    languages = {c["function"]: c["payload"]["language"] for c in sim.invocations()}
    assert languages == {"ee-1-proxy": "cy-GB", "vodafone-1-proxy": "Welsh"}


def test_the_flow_publishes_a_per_provider_table(configure, engine, sim):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    configure(ENABLED_CBCS="ee,vodafone")
    _, _, event_id = make_alert(engine)
    run_event(event_id)

    async def latest():  # type: ignore[no-untyped-def]
        async with get_client() as client:
            return await client.read_latest_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"broadcast-event-{event_id}"]))
            )

    [artifact] = asyncio.run(latest())
    rows = artifact.data if isinstance(artifact.data, list) else __import__("json").loads(artifact.data)
    assert [(r["provider"], r["status"], r["attempts"]) for r in rows] == [
        ("ee", "returned-ack", 1), ("vodafone", "returned-ack", 1)
    ]
    assert rows[1]["message_number"] == statuses(engine, event_id)["vodafone"].message_number

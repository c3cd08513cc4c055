"""The `broadcasts` command: what it prints, its exit codes, and that bad input writes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest
from sqlalchemy import func, select

from broadcasts.db import unit_of_work
from broadcasts.models import BroadcastEvent, BroadcastMessage, Service, ServiceBroadcastProvider, ServiceBroadcastSettings
from tests.conftest import PROJECT_ROOT

POLYGON = "51.50,-0.12 51.52,-0.12 51.52,-0.10"


def counts(engine) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
    with unit_of_work(engine) as session:
        return tuple(session.scalar(select(func.count()).select_from(t)) for t in (Service, BroadcastMessage, BroadcastEvent))


def create_alert(cli, *extra: str) -> dict:  # type: ignore[no-untyped-def]
    result = cli("event", "create", "--type", "alert", "--body", "Flood warning", "--polygon", POLYGON,
                 "--finishes-in", "1h", "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_event_create_writes_service_settings_message_and_event_and_prints_their_ids(cli, engine):
    ids = create_alert(cli, "--channel", "government", "--providers", "vodafone")
    assert set(ids) == {"service_id", "broadcast_message_id", "broadcast_event_id"}
    with unit_of_work(engine) as session:
        event = session.get_one(BroadcastEvent, uuid.UUID(ids["broadcast_event_id"]))
        assert str(event.broadcast_message_id) == ids["broadcast_message_id"]
        assert event.transmitted_content == {"body": "Flood warning"}
        assert event.transmitted_areas["simple_polygons"] == [[[51.5, -0.12], [51.52, -0.12], [51.52, -0.1]]]
        service_id = uuid.UUID(ids["service_id"])
        assert session.get_one(ServiceBroadcastSettings, service_id).channel == "government"
        assert session.scalars(select(ServiceBroadcastProvider.provider).where(
            ServiceBroadcastProvider.service_id == service_id)).all() == ["vodafone"]


def test_an_update_continues_the_given_message(cli, engine):
    alert = create_alert(cli)
    result = cli("event", "create", "--type", "update", "--message", alert["broadcast_message_id"],
                 "--body", "Flood warning: updated", "--json")
    assert result.exit_code == 0, result.output
    update = json.loads(result.stdout)
    assert update["broadcast_message_id"] == alert["broadcast_message_id"]
    assert update["service_id"] == alert["service_id"]


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--type", "update", "--message", "not-a-uuid", "--body", "x"], "not a UUID"),
        (["--type", "update", "--message", str(uuid.uuid4()), "--body", "x"], "no broadcast message"),
        (["--type", "alert", "--service", str(uuid.uuid4()), "--body", "x", "--polygon", POLYGON, "--finishes-in", "1h"], "no service"),
        (["--type", "alert", "--body", "x", "--polygon", "51.5;0.1 51.6,0.1 51.6,0.2", "--finishes-in", "1h"], "is not lat,lon"),
        (["--type", "alert", "--body", "x", "--polygon", "51.5,0.1 51.5,0.1 51.6,0.2", "--finishes-in", "1h"], "fewer than 3 distinct points"),
        (["--type", "alert", "--body", "x", "--polygon", POLYGON, "--finishes-in", "1h", "--channel", "loud"], "channel 'loud'"),
        (["--type", "alert", "--body", "x", "--polygon", POLYGON, "--finishes-in", "soon"], "not a duration"),
        (["--type", "alert", "--body", "a" * 1396, "--polygon", POLYGON, "--finishes-in", "1h"], "1396 GSM-7"),
        (["--type", "alert", "--body", "x", "--polygon", POLYGON, "--finishes-in", "1h", "--providers", "ee,orange"], "orange"),
        (["--type", "warning", "--body", "x", "--polygon", POLYGON, "--finishes-in", "1h"], "message type 'warning'"),
        (["--type", "cancel", "--body", "x"], "give --message"),
    ],
    ids=["message-not-uuid", "unknown-message", "unknown-service", "malformed-polygon", "degenerate-polygon",
         "unknown-channel", "bad-duration", "content-too-long", "unknown-provider", "unknown-type", "cancel-without-message"],
)
def test_bad_input_exits_non_zero_with_a_one_line_reason_and_writes_nothing(cli, engine, args, reason):
    before = counts(engine)
    result = cli("event", "create", *args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and reason in lines[0], result.stderr
    assert counts(engine) == before


def test_status_of_an_unknown_or_malformed_id_is_a_clear_error(cli):
    unknown = cli("status", str(uuid.uuid4()))
    malformed = cli("status", "12345")
    assert unknown.exit_code == 2 and "no broadcast event" in unknown.stderr
    assert malformed.exit_code == 2 and "not a UUID" in malformed.stderr


def test_a_bad_configuration_value_fails_at_start_naming_the_variable(cli, configure):
    configure(ENABLED_CBCS="ee,orange")
    result = cli("status", str(uuid.uuid4()))
    assert result.exit_code == 2 and "ENABLED_CBCS" in result.stderr


@pytest.mark.usefixtures("prefect_server")
def test_send_event_exits_zero_when_every_provider_acknowledges_and_status_shows_the_history(cli, sim):
    ids = create_alert(cli)
    sent = cli("send-event", ids["broadcast_event_id"], "--json")
    assert sent.exit_code == 0, sent.output
    report = json.loads(sent.stdout[sent.stdout.index("{"):])
    assert [(p["provider"], p["status"]) for p in report["providers"]] == [("ee", "returned-ack"), ("vodafone", "returned-ack")]

    status = cli("status", ids["broadcast_event_id"], "--json")
    rows = json.loads(status.stdout)
    vodafone = next(r for r in rows if r["provider"] == "vodafone")
    assert vodafone["message_number"] and [h["status"] for h in vodafone["history"]] == ["sending", "returned-ack"]
    assert vodafone["history"][-1]["route"] == "vodafone-1-proxy/cbc_a"
    text = cli("status", ids["broadcast_event_id"]).stdout
    assert "vodafone: returned-ack" in text and "message number" in text and "attempt 1" in text


@pytest.mark.usefixtures("prefect_server")
def test_send_event_exits_non_zero_when_a_provider_does_not_acknowledge(cli, sim):
    ids = create_alert(cli, "--stubbed")
    result = cli("send-event", ids["broadcast_event_id"])
    assert result.exit_code == 1
    assert sim.invocations() == []


def test_replay_rejects_an_unknown_provider(cli):
    result = cli("replay", str(uuid.uuid4()), "orange")
    assert result.exit_code == 2 and "unknown provider 'orange'" in result.stderr


def test_the_console_script_answers_help_without_a_configured_environment():
    result = subprocess.run([sys.executable, "-m", "deployments.cli", "--help"], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for command in ("db", "event", "status", "send-event", "replay", "simulator"):
        assert command in result.stdout

"""`event create` enforces a broadcast's lifecycle and the longest alert, with one line and exit 2."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import update

from broadcasts.db import unit_of_work
from broadcasts.models import BroadcastMessage, utcnow
from tests.deployments.test_cli import POLYGON, counts, create_alert


def refused(cli, engine, *args: str) -> str:  # type: ignore[no-untyped-def]
    before = counts(engine)
    result = cli("event", "create", *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert counts(engine) == before
    return lines[0]


def test_an_alert_longer_than_the_retry_plan_covers_is_refused_naming_the_limit(cli, engine):
    assert "longer than the longest alert, 7 days" in refused(
        cli, engine, "--type", "alert", "--body", "x", "--polygon", POLYGON, "--finishes-in", "30d")
    create_alert(cli, "--finishes-in", "7d")  # the limit itself is allowed


@pytest.mark.parametrize("then", ["update", "cancel"])
def test_a_cancelled_broadcast_takes_no_update_and_no_second_cancel(cli, engine, then):
    alert = create_alert(cli)
    assert cli("event", "create", "--type", "cancel", "--message", alert["broadcast_message_id"]).exit_code == 0
    args = ["--body", "more"] if then == "update" else []
    line = refused(cli, engine, "--type", then, "--message", alert["broadcast_message_id"], *args)
    assert f"{alert['broadcast_message_id']} is cancelled" in line


@pytest.mark.parametrize("then", ["update", "cancel"])
def test_a_finished_broadcast_takes_no_update_or_cancel(cli, engine, then):
    alert = create_alert(cli)
    with unit_of_work(engine) as session:
        session.execute(update(BroadcastMessage).where(BroadcastMessage.id == uuid.UUID(alert["broadcast_message_id"]))
                        .values(finishes_at=utcnow() - timedelta(seconds=1)))
    args = ["--body", "more"] if then == "update" else []
    assert "finished at" in refused(cli, engine, "--type", then, "--message", alert["broadcast_message_id"], *args)


@pytest.mark.parametrize("extra", [["--body", "all clear"], ["--polygon", POLYGON]], ids=["body", "polygon"])
def test_a_cancel_carries_no_body_or_polygon(cli, engine, extra):
    alert = create_alert(cli)
    line = refused(cli, engine, "--type", "cancel", "--message", alert["broadcast_message_id"], *extra)
    assert "a cancel carries no --body or --polygon" in line

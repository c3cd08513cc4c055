"""How long resume-dispatch lets a Running run go without a sign of life, and on which clock
(flows/resume_dispatch.py). Against the real server: test_resume_dispatch.py."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from prefect.states import Running

from broadcasts.settings import Settings
from flows.resume_dispatch import heartbeat_silence, silent_for

T0 = datetime(2026, 12, 6, 10, 0, tzinfo=timezone.utc)


def running_since(when: datetime) -> FlowRun:
    return FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), state=Running(timestamp=when))


def test_the_allowance_is_one_heartbeat_more_than_the_zombie_automation_allows():
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 30}):
        assert heartbeat_silence(Settings(crashed_after_missed_heartbeats=3)) == timedelta(seconds=120)
        assert heartbeat_silence(Settings(crashed_after_missed_heartbeats=2)) == timedelta(seconds=90)
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 45}):
        assert heartbeat_silence(Settings(crashed_after_missed_heartbeats=3)) == timedelta(seconds=180)


def test_silence_counts_from_the_last_stored_event_or_the_state_to_the_newest_stored_event():
    run = running_since(T0)
    assert silent_for(run, None, T0 + timedelta(seconds=95)) == timedelta(seconds=95)
    assert silent_for(run, T0 + timedelta(seconds=60), T0 + timedelta(seconds=95)) == timedelta(seconds=35)
    # An event from before the run's current state (an earlier Running) says nothing about now.
    assert silent_for(run, T0 - timedelta(seconds=60), T0 + timedelta(seconds=95)) == timedelta(seconds=95)


def test_nothing_is_judged_without_a_stored_event_to_count_to():
    """Prefect's event store empty, or behind: the wall clock is never used, so a store minutes
    behind makes no live run look silent."""
    assert silent_for(running_since(T0), None, None) is None
    assert silent_for(running_since(T0), None, T0 - timedelta(seconds=5)) == timedelta(seconds=-5)

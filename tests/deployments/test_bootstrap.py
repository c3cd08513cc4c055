"""Bootstrap is idempotent, and `prefect deploy --all` succeeds from a clean checkout, against a
real Prefect server."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from datetime import timedelta

import pytest
from prefect.client.orchestration import get_client

from prefect.events.schemas.automations import AutomationCore

from deployments import automations, names
from flows.send_broadcast_event import DEPLOYMENT_NAME as SEND_EVENT_DEPLOYMENT
from flows.send_provider_message import DEPLOYMENT_NAME as SEND_PROVIDER_DEPLOYMENT
from deployments.bootstrap import bootstrap
from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_bootstrap_twice_creates_then_finds_the_same_pool_and_queues():
    # Another test on this server may have bootstrapped first, with other settings (its automation
    # then "had changed"): what the first run did is settled, the second must find all of it.
    first = bootstrap()
    second = bootstrap()
    assert [s.what.removesuffix(" (it had changed)") for s in first] == [s.what for s in second]
    assert not any(s.created for s in second), [str(s) for s in second]
    with get_client(sync_client=True) as client:
        assert client.read_work_pool(names.WORK_POOL).type == "process"
        queues = {q.name: q.priority for q in client.read_work_queues(work_pool_name=names.WORK_POOL)}
    assert queues[names.ALERTS_QUEUE] < queues[names.LINK_TESTS_QUEUE]  # alerts are taken first
    assert min(queues.values()) == queues[names.ALERTS_QUEUE]


def test_bootstrap_puts_back_a_queue_priority_someone_changed():
    bootstrap()
    with get_client(sync_client=True) as client:
        alerts = client.read_work_queue_by_name(names.ALERTS_QUEUE, work_pool_name=names.WORK_POOL)
        client.update_work_queue(alerts.id, priority=50)
    changed = [s for s in bootstrap() if s.created]
    assert [s.what for s in changed] == ["queue alerts (priority 1) in broadcasts (priority was 50)"]


def test_an_automation_read_back_is_unchanged_whatever_the_order_of_its_sets():
    wanted = automations.zombie_runs(30, 3)
    read_back = AutomationCore.model_validate(json.loads(json.dumps(wanted.model_dump(mode="json"))))
    read_back.trigger.expect = set(reversed(sorted(read_back.trigger.expect)))  # another insertion order
    assert automations.unchanged(read_back, wanted)
    assert not automations.unchanged(read_back, automations.zombie_runs(60, 3))


def test_the_zombie_run_silence_is_the_missed_heartbeats_times_the_interval():
    automation = automations.zombie_runs(30, 2)
    assert automation.trigger.within == timedelta(seconds=60)
    # Watched from Running, announced by the server: a run killed before its first heartbeat is sent.
    assert automation.trigger.after == {"prefect.flow-run.heartbeat", "prefect.flow-run.Running"}
    assert automation.actions[0].message == "no heartbeat for 60 s: its process died"


def test_prefect_deploy_all_succeeds_from_a_clean_checkout(tmp_path):
    bootstrap()
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=PROJECT_ROOT, check=True, capture_output=True).stdout
    tarfile.open(fileobj=io.BytesIO(archive)).extractall(tmp_path)
    (tmp_path / "prefect.yaml").write_text((PROJECT_ROOT / "prefect.yaml").read_text())  # this tree's
    result = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"], cwd=tmp_path,
                            env={**os.environ, "PREFECT_HOME": str(tmp_path / ".prefect")},
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with get_client(sync_client=True) as client:
        try:
            for name in (SEND_EVENT_DEPLOYMENT, SEND_PROVIDER_DEPLOYMENT):
                deployment = client.read_deployment_by_name(name)
                assert (deployment.work_pool_name, deployment.work_queue_name) == (names.WORK_POOL, names.ALERTS_QUEUE)
                assert deployment.pull_steps == []
        finally:  # the other tests serve these names from `broadcasts serve`: one topology per server
            for deployment in client.read_deployments():
                client.delete_deployment(deployment.id)

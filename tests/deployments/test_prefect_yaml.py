"""`prefect.yaml` and the served deployments declare the same names, entrypoints, queues,
descriptions and trigger, and the names match `deployments/names.py`."""

from __future__ import annotations

import yaml
from prefect.flows import load_flow_from_entrypoint

from broadcasts.settings import Settings, get_settings
from deployments import names
from flows.expire_broadcasts import FLOW_NAME as EXPIRY_FLOW
from flows.link_tests import FLOW_NAME as LINK_TESTS_FLOW
from flows.resume_dispatch import FLOW_NAME as RESUME_FLOW
from flows.send_broadcast_event import DEPLOYMENT_NAME as SEND_EVENT_DEPLOYMENT, FLOW_NAME as SEND_EVENT_FLOW
from flows.send_provider_message import FLOW_NAME as SEND_PROVIDER_FLOW
from deployments.definitions import deployments
from tests.conftest import PROJECT_ROOT


def project() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())


def test_every_deployment_runs_on_the_alerts_queue_of_the_pool_from_the_installed_package():
    config = project()
    assert config["pull"] == []  # workers run the installed package: nothing to fetch
    assert {d["name"]: (d["work_pool"]["name"], d["work_pool"]["work_queue_name"]) for d in config["deployments"]} == {
        SEND_EVENT_FLOW: (names.WORK_POOL, names.ALERTS_QUEUE),
        SEND_PROVIDER_FLOW: (names.WORK_POOL, names.ALERTS_QUEUE),
        LINK_TESTS_FLOW: (names.WORK_POOL, names.LINK_TESTS_QUEUE),
        RESUME_FLOW: (names.WORK_POOL, names.ALERTS_QUEUE),
        EXPIRY_FLOW: (names.WORK_POOL, names.ALERTS_QUEUE),
    }


def test_link_tests_run_on_the_default_schedule_one_at_a_time_in_both_places():
    (declared,) = [d for d in project()["deployments"] if d["name"] == LINK_TESTS_FLOW]
    (served,) = [d for d in deployments() if d.name == LINK_TESTS_FLOW]
    assert declared["schedules"] == [{"cron": Settings.model_fields["link_test_cron"].default}]
    assert [s.schedule.cron for s in served.schedules] == [get_settings().link_test_cron]
    assert declared["concurrency_limit"] == served.concurrency_limit == 1


def test_entrypoints_import_the_flows_that_serve_runs_with_the_same_names_and_descriptions():
    served = {d.name: d for d in deployments()}
    for declared in project()["deployments"]:
        flow = load_flow_from_entrypoint(declared["entrypoint"])
        deployment = served[declared["name"]]
        assert flow.name == deployment.flow_name == declared["name"]
        assert " ".join(declared["description"].split()) == deployment.description
    assert f"{SEND_EVENT_FLOW}/{SEND_EVENT_FLOW}" == SEND_EVENT_DEPLOYMENT


def test_the_event_created_trigger_is_the_same_in_both_places():
    (declared,) = [d for d in project()["deployments"] if d["name"] == SEND_EVENT_FLOW][0]["triggers"]
    (served,) = [d for d in deployments() if d.name == SEND_EVENT_FLOW][0].triggers
    assert declared["expect"] == sorted(served.expect) == [names.EVENT_CREATED]
    assert declared["match"] == served.match.root == {"prefect.resource.id": f"{names.EVENT_RESOURCE_PREFIX}*"}
    assert declared["parameters"] == served.parameters


def test_resume_dispatch_runs_every_interval_with_no_slot_to_leak_in_both_places():
    (declared,) = [d for d in project()["deployments"] if d["name"] == RESUME_FLOW]
    (served,) = [d for d in deployments() if d.name == RESUME_FLOW]
    assert declared["schedules"] == [{"interval": Settings.model_fields["resume_interval_seconds"].default}]
    assert [s.schedule.interval.total_seconds() for s in served.schedules] == [get_settings().resume_interval_seconds]
    assert "concurrency_limit" not in declared and served.concurrency_limit is None


def test_expire_broadcasts_runs_every_minute_with_no_slot_to_leak_in_both_places():
    (declared,) = [d for d in project()["deployments"] if d["name"] == EXPIRY_FLOW]
    (served,) = [d for d in deployments() if d.name == EXPIRY_FLOW]
    assert Settings.model_fields["expiry_interval_seconds"].default == 60
    assert declared["schedules"] == [{"interval": 60}]
    assert [s.schedule.interval.total_seconds() for s in served.schedules] == [get_settings().expiry_interval_seconds]
    assert "concurrency_limit" not in declared and served.concurrency_limit is None

"""The deployments this service runs: their names, descriptions, schedules and trigger, and which
of them the warm dispatcher (deployments/dispatcher.py) runs in its own process: the alert
deployments the moment a run is created, resume-dispatch and expire-broadcasts when a scheduled
run falls due. The Runner serves link-tests, each run in a fresh process.

The same deployments are in `prefect.yaml` for `prefect deploy --all` and workers on the pool
`broadcasts`; tests/deployments/test_prefect_yaml.py checks the two agree. With several machines,
run workers (or `serve`, or `dispatcher`) on each: the claim, the per-provider limit and the
per-message database lock already make that safe.
"""

from __future__ import annotations

from datetime import timedelta

from prefect import Flow
from prefect.deployments.runner import RunnerDeployment
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

from broadcasts.settings import get_settings
from deployments import names
from flows.expire_broadcasts import EXPIRY_DESCRIPTION, FLOW_NAME as EXPIRY_FLOW, expire_broadcasts
from flows.link_tests import FLOW_NAME as LINK_TESTS_FLOW
from flows.resume_dispatch import FLOW_NAME as RESUME_FLOW
from flows.send_broadcast_event import DEPLOYMENT_NAME as SEND_EVENT_DEPLOYMENT, FLOW_NAME as SEND_EVENT_FLOW
from flows.send_provider_message import DEPLOYMENT_NAME as SEND_PROVIDER_DEPLOYMENT, FLOW_NAME as SEND_PROVIDER_FLOW
from flows.link_tests import link_tests
from flows.resume_dispatch import RESUME_DESCRIPTION, resume_dispatch
from flows.send_broadcast_event import send_broadcast_event
from flows.send_provider_message import send_provider_message

SEND_EVENT_DESCRIPTION = (
    "Send one broadcast event to every mobile network its service may use, in parallel, "
    "retrying each until it is acknowledged or the alert expires. Safe to run again: networks "
    "that already acknowledged are not sent to again, and every network keeps its identifier. "
    "Started by the webhook (one run per event) or the broadcast.event.created event; "
    "'Retry' on a failed run re-sends only to the networks that have not acknowledged."
)
SEND_PROVIDER_DESCRIPTION = (
    "Re-send one broadcast event to one network (ee, three, o2 or vodafone) with the same "
    "identifier; does nothing if that network already acknowledged it. Use 'Custom run' with "
    "the event id and the provider to replay one network after fixing what stopped it."
)

LINK_TESTS_DESCRIPTION = (
    "Prove every route to every mobile network works: one test message on each route (proxy Lambda "
    "and CBC) of each provider separately, on a schedule (LINK_TEST_CRON). Fails naming the failed routes; "
    "the table artifact 'link-tests' shows each route's result and latency. Never two at once."
)

# The alert deployments (full names, flow/deployment) and their flows, which the webhook, the
# trigger and the UI start runs of.
ALERT_DEPLOYMENTS: dict[str, Flow] = {SEND_EVENT_DEPLOYMENT: send_broadcast_event,
                                      SEND_PROVIDER_DEPLOYMENT: send_provider_message}
# What the dispatcher runs in its process, not the Runner: the alert deployments, and the two
# scheduled flows that only read the databases and the API. As Runner runs, each of those cost a
# fresh Python process, about 3 s of CPU, every interval (and 9 s to start on a loaded machine).
WARM_DEPLOYMENTS: dict[str, Flow] = {**ALERT_DEPLOYMENTS, f"{RESUME_FLOW}/{RESUME_FLOW}": resume_dispatch,
                                     f"{EXPIRY_FLOW}/{EXPIRY_FLOW}": expire_broadcasts}


def is_warm(deployment: RunnerDeployment) -> bool:
    return f"{deployment.flow_name}/{deployment.name}" in WARM_DEPLOYMENTS


def event_created_trigger() -> DeploymentEventTrigger:
    """`broadcast.event.created` on resource `broadcasts.event.<id>` starts a run for that id."""
    return DeploymentEventTrigger(
        name="broadcast event created",
        expect={names.EVENT_CREATED},
        match={"prefect.resource.id": f"{names.EVENT_RESOURCE_PREFIX}*"},
        parameters={"broadcast_event_id": "{{ event.resource.id.split('.')[-1] }}"},
    )


def deployments() -> list[RunnerDeployment]:
    """The deployments `serve` runs (names as in `prefect.yaml`)."""
    settings = get_settings()
    return [
        send_broadcast_event.to_deployment(
            name=SEND_EVENT_FLOW, description=SEND_EVENT_DESCRIPTION,
            triggers=[event_created_trigger()],
        ),
        send_provider_message.to_deployment(
            name=SEND_PROVIDER_FLOW, description=SEND_PROVIDER_DESCRIPTION,
        ),
        resume_dispatch.to_deployment(
            name=RESUME_FLOW, description=RESUME_DESCRIPTION,
            # No concurrency limit: a run killed while starting would hold the slot for minutes,
            # and two resumers at once are safe (their idempotency keys agree).
            interval=timedelta(seconds=settings.resume_interval_seconds),
        ),
        expire_broadcasts.to_deployment(
            name=EXPIRY_FLOW, description=EXPIRY_DESCRIPTION,
            # No concurrency limit, as for resume: two copies at once complete each message once.
            interval=timedelta(seconds=settings.expiry_interval_seconds),
        ),
        link_tests.to_deployment(
            name=LINK_TESTS_FLOW, description=LINK_TESTS_DESCRIPTION, cron=settings.link_test_cron,
            concurrency_limit=1,  # runs never pile up behind a slow one
        ),
    ]


def register_warm_deployments() -> None:
    """Registers (or updates) the deployments the dispatcher runs, with their schedules."""
    for deployment in deployments():
        if is_warm(deployment):
            deployment.apply()



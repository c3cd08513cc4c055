"""The deployments, and `broadcasts serve`: every deployment served from one process.

The alert deployments (send-broadcast-event, send-provider-message) are registered here but run by
the warm dispatcher in this process (deployments/dispatcher.py), the moment a run is created; the
Runner serves resume-dispatch and link-tests on their schedules, each run in a fresh process.

The same deployments are in `prefect.yaml` for `prefect deploy --all` and workers on the pool
`broadcasts`; a test checks the two agree. With several machines, run workers (or `serve`, or
`dispatcher`) on each: the claim, the per-provider limit and the per-message database lock
already make that safe.
"""

from __future__ import annotations

import os
from datetime import timedelta
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from prefect.deployments.runner import RunnerDeployment
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

from deployments import names
from broadcasts.settings import get_settings
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
    "Prove every route to every mobile network works: one test message to each provider's primary "
    "and failover proxy separately, on a schedule (LINK_TEST_CRON). Fails naming the failed routes; "
    "the table artifact 'link-tests' shows each route's result and latency. Never two at once."
)

# The client side of the production settings (serve and workers): the 10 s defaults add 6-15 s
# to every alert. `prefect server start` has its own (see `server_settings`).
CLIENT_SETTINGS = {
    "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    "PREFECT_WORKER_QUERY_SECONDS": "1",
    # Runs send heartbeats, so the zombie-run automation can tell a dead run from a slow one.
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
}


# Run by the dispatcher, not polled by the Runner (their deployment names, as in `deployments()`).
ALERT_DEPLOYMENTS = (names.SEND_EVENT_FLOW, names.SEND_PROVIDER_FLOW)


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
            name=names.SEND_EVENT_FLOW, description=SEND_EVENT_DESCRIPTION,
            triggers=[event_created_trigger()],
        ),
        send_provider_message.to_deployment(
            name=names.SEND_PROVIDER_FLOW, description=SEND_PROVIDER_DESCRIPTION,
        ),
        resume_dispatch.to_deployment(
            name=names.RESUME_FLOW, description=RESUME_DESCRIPTION,
            # No concurrency limit: a run killed while starting would hold the slot for minutes,
            # and two resumers at once are safe (their idempotency keys agree).
            interval=timedelta(seconds=settings.resume_interval_seconds),
        ),
        link_tests.to_deployment(
            name=names.LINK_TESTS_FLOW, description=LINK_TESTS_DESCRIPTION, cron=settings.link_test_cron,
            concurrency_limit=1,  # runs never pile up behind a slow one
        ),
    ]


@contextmanager
def client_settings() -> Iterator[dict[str, str]]:
    """The production client settings, unless the operator set them already."""
    from prefect.settings import (
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_RUNNER_POLL_FREQUENCY,
        PREFECT_WORKER_QUERY_SECONDS,
        temporary_settings,
    )

    setting = {"PREFECT_RUNNER_POLL_FREQUENCY": PREFECT_RUNNER_POLL_FREQUENCY,
               "PREFECT_WORKER_QUERY_SECONDS": PREFECT_WORKER_QUERY_SECONDS,
               "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": PREFECT_FLOWS_HEARTBEAT_FREQUENCY}
    chosen = {key: os.environ.get(key, value) for key, value in CLIENT_SETTINGS.items()}
    with temporary_settings(updates={setting[key]: value for key, value in chosen.items()}):
        yield chosen


def register_alert_deployments() -> None:
    """Registers (or updates) the alert deployments, which the dispatcher runs."""
    for deployment in deployments():
        if deployment.name in ALERT_DEPLOYMENTS:
            deployment.apply()


def serve_all(on_ready: Callable[[list[str]], object] = lambda served: None, limit: int | None = None,
              dispatcher: bool = True) -> None:
    """Serves every deployment until SIGTERM or SIGINT, the alert ones through the dispatcher
    (or, `dispatcher=False`, through the Runner like the others: a poll and a new process per
    run). `on_ready` gets the deployment names once they are registered and the dispatcher
    listens, before the Runner's first poll. On a signal the Runner stops first, then the
    dispatcher drains the alert runs it started."""
    import asyncio
    import signal

    from prefect.exceptions import TerminationSignal
    from prefect.runner import Runner

    from deployments.dispatcher import dispatching

    with client_settings():
        runner = Runner(limit=limit)
        served = []
        if dispatcher:
            register_alert_deployments()  # for the webhook, the trigger and the UI
        for deployment in deployments():
            if not (dispatcher and deployment.name in ALERT_DEPLOYMENTS):
                runner.add_deployment(deployment)  # registers it with the server now
            served.append(f"{deployment.flow_name}/{deployment.name}")
        with dispatching() if dispatcher else nullcontext():
            on_ready(served)
            try:
                asyncio.run(runner.start())
            except (KeyboardInterrupt, TerminationSignal):
                pass
            # The dispatcher now drains, which lasts as long as a run retrying a failing network:
            # a second signal ends the process at once (its runs are recovered as after a crash).
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)

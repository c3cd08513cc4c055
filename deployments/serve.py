"""`broadcasts serve`: the one-machine topology. Bootstrap, then the webhook (unless told not to)
and every deployment (deployments/definitions.py) served from this process against
`PREFECT_API_URL`, until SIGTERM/SIGINT: the alert deployments run by the warm dispatcher in this
process (deployments/dispatcher.py) the moment a run is created, and resume-dispatch and
expire-broadcasts when their scheduled runs fall due; link-tests by Prefect's Runner on its
schedule, each run in a fresh process.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import httpx

from broadcasts.settings import Settings
from deployments.prefect_api import client_settings

logger = logging.getLogger(__name__)
RUNNER_RETRY_WAITS = (1, 2, 5, 10, 30)


def describe(settings: Settings) -> list[str]:
    """What an operator needs to know it is talking to the right things (no secrets)."""
    from prefect.settings import PREFECT_API_URL
    from sqlalchemy.engine import make_url

    replicas = os.environ.get("PREFECT_API_URLS")
    api = (f"replicas {replicas} (through {PREFECT_API_URL.value()})" if replicas
           else PREFECT_API_URL.value() or "none set (a temporary server would be started)")
    return [
        f"Prefect API: {api}",
        f"database: {make_url(settings.database_url).render_as_string(hide_password=True)}",
        f"CBC proxies: {settings.cbc_proxy_endpoint_url or 'AWS Lambda in ' + settings.aws_region}"
        f" (providers {', '.join(settings.enabled_cbcs)})",
    ]


@contextmanager
def webhook_in_thread(settings: Settings, host: str, port: int) -> Iterator[None]:
    """The webhook receiver in a thread of this process, stopped when the block ends."""
    import uvicorn

    from deployments.webhook import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(settings), host=host, port=port, log_level="warning",
                                           access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, name="webhook", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(10)


def run(settings: Settings, *, webhook: tuple[str, int] | None, dispatcher: bool = True,
        echo: Callable[[str], Any] = print) -> None:
    from deployments.bootstrap import bootstrap

    with client_settings() as chosen:
        for line in describe(settings):
            echo(line)
        echo("client settings: " + ", ".join(f"{k}={v}" for k, v in chosen.items()))
        for step in bootstrap(settings.alert_notification_block, settings.crashed_after_missed_heartbeats):
            echo(str(step))
        ready = lambda served: echo("serving: " + ", ".join(served))  # noqa: E731
        if webhook is None:
            serve_all(ready, dispatcher=dispatcher)
            return
        host, port = webhook
        with webhook_in_thread(settings, host, port):
            echo(f"webhook: http://{host}:{port}/broadcast-events")
            serve_all(ready, dispatcher=dispatcher)


def serve_all(on_ready: Callable[[list[str]], object] = lambda served: None, limit: int | None = None,
              dispatcher: bool = True) -> None:
    """Serves every deployment until SIGTERM or SIGINT, the warm ones (the alert deployments,
    resume-dispatch, expire-broadcasts) through the dispatcher (or, `dispatcher=False`, through the
    Runner like link-tests: a poll and a new process per run). `on_ready` gets the deployment
    names once they are registered and the dispatcher listens, before the Runner's first poll. On
    a signal the Runner stops first, then the dispatcher drains the runs it started."""
    import signal

    from prefect.runner import Runner

    from deployments.dispatcher import dispatching
    from deployments.definitions import deployments, is_warm, register_warm_deployments

    def runner() -> Runner:
        made = Runner(limit=limit)
        for deployment in deployments():
            if not (dispatcher and is_warm(deployment)):
                made.add_deployment(deployment)  # registers it with the server now
        return made

    with client_settings():
        if dispatcher:
            register_warm_deployments()  # for the webhook, the trigger, the scheduler and the UI
        first = runner()
        served = [f"{deployment.flow_name}/{deployment.name}" for deployment in deployments()]
        with dispatching() if dispatcher else nullcontext():
            on_ready(served)
            run_runner(first, runner)
            # The dispatcher now drains, which lasts as long as a run retrying a failing network:
            # a second signal ends the process at once (its runs are recovered as after a crash).
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_runner(first: Any, make: Callable[[], Any], waits: Sequence[float] = RUNNER_RETRY_WAITS) -> None:
    """Runs the Runner until a signal. One that fails to start (its events socket refused while
    an API replica restarts, say) is made again after a wait, the last wait repeating, while the
    dispatcher goes on serving alerts: a serve process must not end for a blip at its start."""
    import asyncio

    from prefect.exceptions import TerminationSignal

    runner = first
    for attempt in itertools.count():
        try:
            runner = runner or make()  # registers the deployments again
            asyncio.run(runner.start())
            return
        except (KeyboardInterrupt, TerminationSignal):
            return
        except (RuntimeError, httpx.HTTPError) as error:
            if isinstance(error, RuntimeError) and not str(error).startswith("Runner failed to start"):
                raise
            wait = waits[min(attempt, len(waits) - 1)]
            logger.warning("%s; the Runner (schedules, link tests, resume) starts again in %g s, the "
                           "dispatcher serving alerts meanwhile", error, wait)
        runner = None
        try:
            time.sleep(wait)  # a signal here ends it: SIGINT raises, the unstarted Runner's SIGTERM handler exits
        except (KeyboardInterrupt, SystemExit):
            return

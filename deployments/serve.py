"""`broadcasts serve`: the one-machine topology. Bootstrap, then the webhook (unless told not to)
and every deployment (deployments/definitions.py) served from this process against
`PREFECT_API_URL`, until SIGTERM/SIGINT: the alert deployments run by the warm dispatcher in this
process (deployments/dispatcher.py) the moment a run is created, resume-dispatch,
expire-broadcasts and link-tests by Prefect's Runner on their schedules, each run in a fresh
process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from broadcasts.settings import Settings
from deployments.prefect_api import client_settings


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
        for step in bootstrap(settings.alert_notification_block):
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
    from deployments.definitions import deployments, is_alert, register_alert_deployments

    with client_settings():
        runner = Runner(limit=limit)
        served = []
        if dispatcher:
            register_alert_deployments()  # for the webhook, the trigger and the UI
        for deployment in deployments():
            if not (dispatcher and is_alert(deployment)):
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

"""`broadcasts serve`: the one-machine topology. Bootstrap, then the webhook (unless told not to)
and every deployment served from this process against `PREFECT_API_URL`, until SIGTERM/SIGINT.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from broadcasts.settings import Settings


def describe(settings: Settings) -> list[str]:
    """What an operator needs to know it is talking to the right things (no secrets)."""
    from prefect.settings import PREFECT_API_URL
    from sqlalchemy.engine import make_url

    return [
        f"Prefect API: {PREFECT_API_URL.value() or 'none set (a temporary server would be started)'}",
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
    from deployments.serve import client_settings, serve_all

    with client_settings() as chosen:
        for line in describe(settings):
            echo(line)
        echo("client settings: " + ", ".join(f"{k}={v}" for k, v in chosen.items()))
        for step in bootstrap(settings.enabled_cbcs, settings.alert_notification_block):
            echo(str(step))
        ready = lambda served: echo("serving: " + ", ".join(served))  # noqa: E731
        if webhook is None:
            serve_all(ready, dispatcher=dispatcher)
            return
        host, port = webhook
        with webhook_in_thread(settings, host, port):
            echo(f"webhook: http://{host}:{port}/broadcast-events")
            serve_all(ready, dispatcher=dispatcher)

"""The Prefect API a process of this service talks to: the client settings it runs with, a
temporary server for a one-off command when none is configured, one client for the flows it calls
itself, and Prefect's errors in an operator's words."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for Ctrl-C


class PrefectApiError(Exception):
    """The Prefect API is not configured, did not start, refused or did not answer: one line."""


# The client side of the production settings (serve and workers): the 10 s defaults add 6-15 s
# to every alert. `prefect server start` has its own (deployments/server.py).
CLIENT_SETTINGS = {
    "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    "PREFECT_WORKER_QUERY_SECONDS": "1",
    # Runs send heartbeats, so the zombie-run automation can tell a dead run from a slow one.
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
}


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


def result_storage() -> Any:
    """Where flows run by this process keep their results: what Prefect would choose for each run,
    asked of the server once. Left to Prefect, every run asks the server (GET /admin/storage) two
    or three times before it starts; a server default storage set later takes effect when the
    process restarts."""
    from prefect.results import get_default_result_storage

    storage = get_default_result_storage()
    if getattr(storage, "_block_document_id", None) is not None:  # a saved block: the server's default
        return storage
    return Path(storage.basepath)  # Prefect's local default (a flow takes only saved blocks or a path)


@contextmanager
def direct_runs() -> Iterator[Callable[[Any], Any]]:
    """Around flows this process calls itself (`broadcasts send-event` and `replay`, the
    benchmarks): one Prefect client for all of them and their task threads, and their result
    storage asked of the server once. Yields what gives a flow that storage (unless it names its
    own) and Prefect's own choice of persistence, taken once. Left to Prefect, each call built a
    client of its own (a TLS context from certifi's bundle, about 20 ms, and a CSRF token) and
    asked for the server's default storage three times (GET /admin/storage). A command that runs
    one flow saves two of those requests; a process that runs many, the client too."""
    from prefect.context import SyncClientContext
    from prefect.results import should_persist_result

    with SyncClientContext.get_or_create():
        storage = result_storage()
        # Prefect's rule outside a run: persisted when the settings say so or a default storage is set.
        persist = should_persist_result() or not isinstance(storage, Path)

        def prepared(flow: Any) -> Any:
            return flow.with_options(
                result_storage=storage if flow.result_storage is None else flow.result_storage,
                persist_result=persist if flow.persist_result is None else flow.persist_result)

        yield prepared


def start_temporary_server(server: Any) -> None:
    """Starts Prefect's temporary server as Prefect itself would without PREFECT_API_URL, but
    with the service's server settings (deployments/server.py: no analytics, concurrency leases
    kept on disk) where the operator set none: the server process inherits this environment."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    from deployments.server import server_environment

    os.environ.update(server_environment(os.environ))
    try:
        # The first start migrates a fresh Prefect database, which can outlast Prefect's 20 s default.
        server.start(timeout=max(60, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()))
    except RuntimeError as error:
        server.stop()
        raise PrefectApiError(f"the temporary Prefect server did not start ({str(error).splitlines()[0]}); "
                              "set PREFECT_API_URL to a running server") from None


def stop_now(server: Any) -> None:
    """Stops the temporary server without logging (this runs inside a signal handler)."""
    process = server.server_process
    if process is not None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def temporary_or_configured(interrupted: str) -> Iterator[None]:
    """Flows in this block run against PREFECT_API_URL or, when it is unset, a temporary server
    that lives only as long as the block.

    Ctrl-C ends the command at once: one line, exit 130. Prefect's own handling would wait for
    the task threads, asleep in a retry delay (up to 240 s) or a proxy call, then print a
    traceback. Leaving hard is safe: a provider message left `sending` or `returned-error` is
    continued by the next run with the same identifier, and its lock dies with this process."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deployments.prefect_failover import send_pending_logs_and_events

    server = None
    if not PREFECT_API_URL.value():
        from prefect.server.api.server import SubprocessASGIServer  # only then: a heavy import

        server = SubprocessASGIServer()

    def on_interrupt(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        print(f"interrupted: {interrupted}", file=sys.stderr, flush=True)
        if server is not None:
            stop_now(server)
        os._exit(EXIT_INTERRUPTED)  # no waiting for the task threads

    previous = signal.signal(signal.SIGINT, on_interrupt)  # before the server starts: it takes seconds
    try:
        if server is None:
            with client_settings():  # the heartbeat the service's zombie-run automation expects
                yield
            return
        start_temporary_server(server)
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}), client_settings():
            yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if server is not None:
            send_pending_logs_and_events()  # while the temporary server still listens
            server.stop()


def wait_for_run(run_id: uuid.UUID, timeout_seconds: float = 600) -> tuple[Any, str]:
    """The run's final state (or its state when the wait ran out) and its address in the UI.

    Polled: `prefect.flow_runs.wait_for_flow_run` waits for the run's final event alone, and an event
    lost while a replica or Redis restarts would leave it waiting for the whole timeout."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_UI_URL

    deadline = time.monotonic() + timeout_seconds
    with get_client(sync_client=True) as client:
        while not (state := client.read_flow_run(run_id).state).is_final() and time.monotonic() < deadline:
            time.sleep(0.5)
    from deployments import prefect_failover

    return state, f"{prefect_failover.ui_url() or PREFECT_UI_URL.value()}/runs/flow-run/{run_id}"


@contextmanager
def prefect_errors() -> Iterator[None]:
    """The Prefect API refusing or not answering becomes a PrefectApiError of one line."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    from prefect.exceptions import ObjectNotFound

    try:
        yield
    except ObjectNotFound as error:
        raise PrefectApiError(f"not found on the Prefect API at {PREFECT_API_URL.value()}: {error}") from None
    except httpx.HTTPStatusError as error:
        hint = ": set PREFECT_API_AUTH_STRING to the server's auth string" if error.response.status_code == 401 else ""
        raise PrefectApiError(
            f"the Prefect API at {PREFECT_API_URL.value()} answered HTTP {error.response.status_code}{hint}") from None
    except (httpx.TransportError, RuntimeError) as error:
        # A new client's version check wraps what stopped it in a RuntimeError.
        unreachable = error.__cause__ if isinstance(error, RuntimeError) else error
        if not isinstance(unreachable, httpx.TransportError):
            raise
        raise PrefectApiError(f"cannot reach the Prefect API at {PREFECT_API_URL.value()}: "
                              f"{unreachable or type(unreachable).__name__}") from None


def require_api() -> None:
    """Raises PrefectApiError unless a Prefect API is configured."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise PrefectApiError("PREFECT_API_URL is not set: point it at the Prefect server (start one with "
                              "`broadcasts server`), or PREFECT_API_URLS at its replicas")

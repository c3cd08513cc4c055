"""The `broadcasts` command. Prefect is imported only by the commands that run flows, so the
others start fast."""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from typer.core import TyperGroup

from broadcasts.errors import DispatchError, InvalidInput
from broadcasts.settings import Settings, describe_invalid_settings, get_settings
from broadcasts.validation import parse_duration, parse_polygon, parse_uuid

# The order an operator meets the commands in; typer would list single commands before groups.
OPERATOR_ORDER = ("db", "event", "send-event", "status", "replay", "trigger", "link-test", "server",
                  "bootstrap", "serve", "dispatcher", "webhook", "simulator")


def reflow(text: str | None) -> str | None:
    """Joins the lines of each paragraph, so the terminal wraps help text: rich help keeps a
    docstring's source line breaks, which then break rows and sentences in odd places."""
    if not text:
        return text
    return "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(text).split("\n\n"))


class OperatorHelp(TyperGroup):
    """Lists OPERATOR_ORDER first (then any other command, in the order it was added), with
    every command's help reflowed."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for command in self.commands.values():
            command.help = reflow(command.help)

    def list_commands(self, ctx: typer.Context) -> list[str]:
        rank = {name: i for i, name in enumerate(OPERATOR_ORDER)}
        return sorted(super().list_commands(ctx), key=lambda name: rank.get(name, len(rank)))


app = typer.Typer(
    cls=OperatorHelp,
    help="Dispatcher for emergency cell-broadcast alerts: sends each event to every mobile "
    "network's CBC proxy, in order, exactly once.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(cls=OperatorHelp, help="Database schema.", no_args_is_help=True)
event_app = typer.Typer(cls=OperatorHelp, help="Broadcast events.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(event_app, name="event")

EXIT_NOT_ACKNOWLEDGED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for Ctrl-C


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as error:
        fail(describe_invalid_settings(error))


def engine():  # type: ignore[no-untyped-def]
    """The app database, checked first: a missing schema or an unreachable server is one line."""
    from broadcasts.db import get_engine
    from broadcasts.migrate import DatabaseNotReady, check_schema

    database = get_engine(settings().database_url)
    try:
        check_schema(database)
    except DatabaseNotReady as error:
        fail(str(error))
    return database


def as_uuid(value: str, what: str) -> uuid.UUID:
    try:
        return parse_uuid(value, what)
    except InvalidInput as error:
        fail(str(error))


@app.callback()
def _check_configuration() -> None:
    settings()  # every command fails at start on a bad variable, naming it


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the database schema to the newest revision."""
    from broadcasts.db import get_engine
    from broadcasts.migrate import DatabaseNotReady, display_url, upgrade

    database = get_engine(settings().database_url)
    try:
        before, after = upgrade(database)
    except DatabaseNotReady as error:
        fail(str(error))
    where = f"the database at {display_url(database)}"
    if before is None:
        typer.echo(f"created the schema (revision {after}) in {where}")
    elif before == after:
        typer.echo(f"{where} is up to date (revision {after})")
    else:
        typer.echo(f"migrated {where} from revision {before} to {after}")


@event_app.command("create")
def event_create(
    type_: Annotated[str, typer.Option("--type", help="alert, update or cancel")],
    body: Annotated[str | None, typer.Option(help="The text people will see (alert, update).")] = None,
    polygon: Annotated[
        list[str] | None,
        typer.Option(help='An area as "lat,lon lat,lon lat,lon ..."; repeat for more areas.'),
    ] = None,
    finishes_in: Annotated[str | None, typer.Option(help="How long it lasts: 90s, 30m, 2h, 1h30m.")] = None,
    message: Annotated[str | None, typer.Option(help="The broadcast message an update or cancel continues.")] = None,
    service: Annotated[str | None, typer.Option(help="An existing service id (default: create one).")] = None,
    channel: Annotated[str | None, typer.Option(help="test, operator, severe or government (new service).")] = None,
    providers: Annotated[str | None, typer.Option(help="Comma list the new service may use, e.g. ee,o2.")] = None,
    stubbed: Annotated[bool, typer.Option(help="Mark the new broadcast stubbed: nothing is sent.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the ids as JSON.")] = False,
) -> None:
    """Write a broadcast event as the service API would, creating the service and message when not
    given. Prints service_id, broadcast_message_id and broadcast_event_id."""
    from broadcasts.db import unit_of_work
    from broadcasts.events import create_event
    from broadcasts.models import utcnow

    try:
        polygons = [parse_polygon(p) for p in polygon] if polygon else None
        duration = parse_duration(finishes_in) if finishes_in else None
    except ValueError as error:
        fail(str(error))
    message_id = as_uuid(message, "--message") if message else None
    service_id = as_uuid(service, "--service") if service else None
    provider_list = [p.strip().lower() for p in providers.split(",") if p.strip()] if providers else None
    try:
        with unit_of_work(engine()) as session:
            created = create_event(
                session, message_type=type_, now=utcnow(), body=body, polygons=polygons,
                finishes_in=duration, message_id=message_id, service_id=service_id,
                channel=channel, providers=provider_list, stubbed=stubbed,
            )
    except InvalidInput as error:
        fail(str(error))
    if as_json:
        typer.echo(json.dumps(created.as_dict()))
    else:
        for key, value in created.as_dict().items():
            typer.echo(f"{key}: {value}")


@app.command("status")
def status(
    event_id: Annotated[str, typer.Argument(help="The broadcast event id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Per provider: status, identifier, message number, and the history of every attempt."""
    from broadcasts.db import unit_of_work
    from broadcasts.status import event_status
    from deployments.report import status_lines

    eid = as_uuid(event_id, "event id")
    try:
        with unit_of_work(engine()) as session:
            statuses = event_status(session, eid)
    except DispatchError as error:
        fail(str(error))
    if as_json:
        typer.echo(json.dumps([{**s.as_row(), "history": [
            {**h.__dict__, "created_at": h.created_at.isoformat()} for h in s.history
        ]} for s in statuses], indent=2))
        return
    if not statuses:
        typer.echo(f"event {eid}: nothing sent yet")
    for line in status_lines(statuses):
        typer.echo(line)


def print_rows(rows: list[dict[str, Any]], state: Any, as_json: bool) -> None:
    from deployments.report import table_lines

    if as_json:
        typer.echo(json.dumps({"state": state.name, "message": state.message, "providers": rows}, indent=2))
        return
    typer.echo(f"{state.name}: {state.message}")
    for line in table_lines(rows):
        typer.echo(line)


def start_temporary_server(server: Any) -> None:
    """Starts Prefect's temporary server as Prefect itself would without PREFECT_API_URL, but
    with the service's server settings (deployments/server.py: no analytics, slot leases kept on
    disk) where the operator set none: the server process inherits this environment."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    from deployments.server import server_environment

    os.environ.update(server_environment(os.environ))
    try:
        # The first start migrates a fresh Prefect database, which can outlast Prefect's 20 s default.
        server.start(timeout=max(60, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()))
    except RuntimeError as error:
        server.stop()
        fail(f"the temporary Prefect server did not start ({str(error).splitlines()[0]}); "
             "set PREFECT_API_URL to a running server")


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
def prefect_api(interrupted: str) -> Iterator[None]:
    """Flows in this block run against PREFECT_API_URL or, when it is unset, a temporary server
    that lives only as long as the block.

    Ctrl-C ends the command at once: one line, exit 130. Prefect's own handling would wait for
    the task threads, asleep in a retry delay (up to 240 s) or a proxy call, then print a
    traceback. Leaving hard is safe: a provider message left `sending` or `returned-error` is
    continued by the next run with the same identifier, and its lock dies with this process."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = None
    if not PREFECT_API_URL.value():
        from prefect.server.api.server import SubprocessASGIServer  # only then: a heavy import

        server = SubprocessASGIServer()

    def on_interrupt(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        typer.echo(f"interrupted: {interrupted}", err=True)
        if server is not None:
            stop_now(server)
        os._exit(EXIT_INTERRUPTED)  # no waiting for the task threads

    from deployments.serve import client_settings

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
            send_pending_logs_and_events()
            server.stop()


def send_pending_logs_and_events() -> None:
    """Sends the run's queued logs and events while the temporary server still listens: at exit
    Prefect would retry them against the stopped server for over a minute."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)


def run_and_report(flow_call: Any, event_id: uuid.UUID, providers: list[str] | None, as_json: bool,
                   interrupted: str) -> None:
    with prefect_api(interrupted):
        state = flow_call()
    report(state, event_id, providers, as_json)


def report(state: Any, event_id: uuid.UUID, providers: list[str] | None, as_json: bool) -> None:
    """Prints the run's state and the per-provider table; exit 1 unless every provider acknowledged."""
    from broadcasts.db import unit_of_work
    from broadcasts.status import event_status

    try:
        with unit_of_work(engine()) as session:
            rows = [s.as_row() for s in event_status(session, event_id)]
    except DispatchError as error:
        fail(f"{state.message}; {error}")
    if providers is not None:
        rows = [r for r in rows if r["provider"] in providers]
    print_rows(rows, state, as_json)
    everyone = providers or [r["provider"] for r in rows]
    acked = {r["provider"] for r in rows if r["status"] == "returned-ack"}
    if not state.is_completed() or not rows or not set(everyone) <= acked:
        raise typer.Exit(EXIT_NOT_ACKNOWLEDGED)


@app.command("send-event")
def send_event(
    event_id: Annotated[str, typer.Argument(help="The broadcast event id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Send an event to every available provider not yet acknowledged now, technical-failure ones
    included (in this process, against the configured Prefect API or a temporary one). Exit code 0
    only when every provider acknowledged."""
    from broadcasts.db import unit_of_work
    from broadcasts.dispatch import plan_event

    eid = as_uuid(event_id, "event id")
    config = settings()
    database = engine()  # checked even when dispatch is off: the report reads it afterwards
    providers: list[str] | None = None
    if config.cbc_proxy_enabled:
        try:
            with unit_of_work(database) as session:
                providers = plan_event(session, eid, config.enabled_cbcs).providers
        except DispatchError as error:
            fail(str(error))
    from flows.send_broadcast_event import send_broadcast_event

    # An operator's explicit re-send: technical-failure providers are sent again too.
    run_and_report(lambda: send_broadcast_event(str(eid), replay_failed=True, return_state=True), eid,
                   providers, as_json, interrupted=f"sending event {eid} stopped; run `broadcasts send-event {eid}` again, "
                   f"or `broadcasts replay {eid} PROVIDER`, to continue")


@app.command("replay")
def replay(
    event_id: Annotated[str, typer.Argument(help="The broadcast event id.")],
    provider: Annotated[str, typer.Argument(help="ee, three, o2 or vodafone.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Re-run one (event, provider): sends with the same identifier unless already acknowledged."""
    from broadcasts import dao
    from broadcasts.db import unit_of_work
    from broadcasts.providers import get_provider

    eid = as_uuid(event_id, "event id")
    try:
        get_provider(provider)
        with unit_of_work(engine()) as session:
            dao.get_event(session, eid)
    except DispatchError as error:
        fail(str(error))
    from flows.send_provider_message import send_provider_message

    run_and_report(
        lambda: send_provider_message(str(eid), provider, return_state=True), eid, [provider], as_json,
        interrupted=f"replay of event {eid} to {provider} stopped; run it again to continue",
    )


@app.command("simulator")
def simulator(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9001,
) -> None:
    """Run the CBC proxy simulator (the Lambda Invoke API of the eight proxies and `canary`)."""
    from simulator.app import CannotListen, run

    try:
        run(host=host, port=port, prefix=settings().cbc_proxy_function_prefix)
    except CannotListen as error:
        fail(str(error))


@app.command("bootstrap")
def bootstrap_command() -> None:
    """Create the work pool, its queues (alerts before link-tests), the cbc-<provider> limits and
    the automations (zombie runs; operator alerts with ALERT_NOTIFICATION_BLOCK) that are missing,
    against PREFECT_API_URL; print what was created or found. Safe to repeat."""
    from deployments.bootstrap import bootstrap
    from deployments.serve import client_settings

    require_prefect_api()
    config = settings()
    with client_settings(), prefect_errors():  # the heartbeat the zombie-run automation expects
        for step in bootstrap(config.enabled_cbcs, config.alert_notification_block):
            typer.echo(str(step))


@app.command("serve")
def serve_command(
    webhook: Annotated[bool, typer.Option(help="Also run the signed webhook receiver.")] = True,
    webhook_host: Annotated[str, typer.Option(help="Interface the webhook listens on.")] = "127.0.0.1",
    webhook_port: Annotated[int, typer.Option(help="Port the webhook listens on.", min=1, max=65535)] = 8000,
    dispatcher: Annotated[bool, typer.Option(
        help="Run alert runs in this process the moment they are created. With --no-dispatcher "
        "Prefect's runner starts each in a new process after a poll: 1-2 s later per alert.")] = True,
) -> None:
    """Run the service on this machine against PREFECT_API_URL: bootstrap, the webhook, alert runs
    started in this process as soon as they are created (see `dispatcher`), and resume and link
    tests on their schedules, until SIGTERM or Ctrl-C."""
    from deployments import service

    require_prefect_api()
    config = settings()
    if webhook:
        require_webhook_secret(config)
    with prefect_errors():
        service.run(config, webhook=(webhook_host, webhook_port) if webhook else None, dispatcher=dispatcher,
                    echo=typer.echo)


@app.command("dispatcher")
def dispatcher_command(
    max_runs: Annotated[int | None, typer.Option(
        help="Runs starting at once (default 64): a run counts for its first 10 s, so runs retrying a network "
             "that is down leave room for new alerts, up to 256 runs in all.", min=1)] = None,
) -> None:
    """Run alert runs in this process as soon as they are created, and nothing else (`serve` does
    this too); add one on another machine for capacity: each run is claimed by one process only.

    SIGTERM or Ctrl-C: takes no more runs and finishes those under way; a second signal ends it
    at once (its runs are then recovered as after a crash)."""
    import threading

    from deployments.dispatcher import ALERT_FLOWS, dispatching

    require_prefect_api()
    settings()
    engine()  # the runs write there: a missing schema is one line, before any run is taken
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        # Draining lasts as long as a run retrying a failing network: a second signal ends at once.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    with prefect_errors(), dispatching(max_runs) as dispatcher:
        typer.echo(f"dispatching: {', '.join(ALERT_FLOWS)} (up to {dispatcher.max_runs} runs starting at once, "
                   f"{dispatcher.max_held} in all)")
        while not stop.wait(1):
            pass


@app.command("server")
def server_command(
    host: Annotated[str, typer.Option(help="Interface to listen on (keep the API off public networks).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 4200,
    ui: Annotated[bool, typer.Option(help="Serve the Prefect UI too.")] = True,
) -> None:
    """Start the Prefect server with the settings this service needs (filesystem lease storage, 1 s
    slot waits, no analytics); see the README for its database and auth settings."""
    from deployments.server import start

    start(host, port, ui)


@app.command("webhook")
def webhook_command(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
) -> None:
    """Run the signed webhook receiver alone: POST /broadcast-events starts one send-broadcast-event
    run per event. Needs WEBHOOK_SECRET (32 bytes or more) and PREFECT_API_URL."""
    from deployments.webhook import WebhookNotConfigured, run

    try:
        run(host, port)
    except WebhookNotConfigured as error:
        fail(str(error))


@app.command("trigger")
def trigger_command(
    event_id: Annotated[str, typer.Argument(help="The broadcast event id.")],
    url: Annotated[str, typer.Option(help="The webhook's base URL.")] = "http://127.0.0.1:8000",
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the run, then print the per-provider "
                                       "table and the run's address in the Prefect UI.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --wait: print JSON.")] = False,
) -> None:
    """Ask the webhook to send an event, signing the request with WEBHOOK_SECRET, as the service API
    does. Prints the answer; exit code 0 only for 202 (accepted) and, with --wait, only when every
    provider acknowledged."""
    import httpx

    from deployments.trigger import post_event

    eid = as_uuid(event_id, "event id")
    config = settings()
    if config.webhook_secret is None:
        fail("WEBHOOK_SECRET is not set: the request cannot be signed")
    try:
        code, answer = post_event(url, eid, config.webhook_secret.get_secret_value())
    except httpx.HTTPError as error:
        fail(f"cannot reach the webhook at {url}: {error}")
    typer.echo(f"{code} {json.dumps(answer)}")
    if code != 202:
        raise typer.Exit(EXIT_NOT_ACKNOWLEDGED)
    if wait:
        require_prefect_api()
        with prefect_errors():
            state, address = wait_for_run(uuid.UUID(answer["flow_run_id"]))
        typer.echo(f"run: {address}")
        report(state, eid, None, as_json)


def wait_for_run(run_id: uuid.UUID, timeout_seconds: float = 600) -> tuple[Any, str]:
    """The run's final state (or its state when the wait ran out) and its address in the UI."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_UI_URL

    deadline = time.monotonic() + timeout_seconds
    with get_client(sync_client=True) as client:
        while not (state := client.read_flow_run(run_id).state).is_final() and time.monotonic() < deadline:
            time.sleep(0.5)
    return state, f"{PREFECT_UI_URL.value()}/runs/flow-run/{run_id}"


@app.command("link-test")
def link_test_command(
    provider: Annotated[list[str] | None, typer.Option(help="Test only this provider; repeat for more.")] = None,
    history: Annotated[bool, typer.Option("--history", help="Show stored results instead of testing.")] = False,
    since: Annotated[str, typer.Option(help="With --history: how far back, e.g. 24h, 7d.")] = "24h",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Test every route (primary and failover, separately) of every enabled provider now, and print
    the table; exit code 1 if a route failed. With --history, each route's pass rate instead."""
    if history:
        return print_link_test_history(provider, since, as_json)
    from broadcasts.providers import get_provider
    from flows.link_tests import run_link_tests

    try:
        for name in provider or []:
            get_provider(name)
    except DispatchError as error:
        fail(str(error))
    engine()  # the results are stored there: a missing schema is one line, before any call
    with prefect_api(interrupted="link tests stopped; run `broadcasts link-test` again"), prefect_errors():
        state, rows = run_link_tests(provider)
    if as_json:
        typer.echo(json.dumps({"state": state.name, "message": state.message, "routes": rows}, indent=2))
    else:
        typer.echo(f"{state.name}: {state.message}")
        for r in rows:
            typer.echo(f"  {r['provider']:<9} {r['route']:<9} {'ok' if r['ok'] else 'FAILED':<7} "
                       f"{r['latency_ms'] if r['latency_ms'] is not None else '-':>6} ms"
                       + (f"  {r['error']}" if r["error"] else ""))
    if not state.is_completed():
        raise typer.Exit(EXIT_NOT_ACKNOWLEDGED)


def print_link_test_history(providers: list[str] | None, since: str, as_json: bool) -> None:
    from broadcasts.db import unit_of_work
    from broadcasts.link_test_history import link_test_history
    from broadcasts.models import utcnow

    try:
        window = parse_duration(since)
    except ValueError as error:
        fail(str(error))
    try:
        with unit_of_work(engine()) as session:
            found = [h for p in (providers or [None]) for h in link_test_history(session, utcnow() - window, p)]
    except DispatchError as error:
        fail(str(error))
    if as_json:
        typer.echo(json.dumps([h.as_row() for h in found], indent=2))
        return
    if not found:
        typer.echo(f"no link tests in the last {since}")
    for h in found:
        typer.echo(f"  {h.provider:<9} {h.route:<9} {h.passes}/{h.runs} passed ({h.pass_rate:.0%})"
                   + (f"  failing {h.consecutive_failures} in a row: {h.last_error}" if h.consecutive_failures else ""))


@contextmanager
def prefect_errors() -> Iterator[None]:
    """The Prefect API refusing or not answering is one line, not a traceback."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    from prefect.exceptions import ObjectNotFound

    try:
        yield
    except ObjectNotFound as error:
        fail(f"not found on the Prefect API at {PREFECT_API_URL.value()}: {error}")
    except httpx.HTTPStatusError as error:
        hint = ": set PREFECT_API_AUTH_STRING to the server's auth string" if error.response.status_code == 401 else ""
        fail(f"the Prefect API at {PREFECT_API_URL.value()} answered HTTP {error.response.status_code}{hint}")
    except httpx.TransportError as error:
        fail(f"cannot reach the Prefect API at {PREFECT_API_URL.value()}: {error or type(error).__name__}")


def require_prefect_api() -> None:
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        fail("PREFECT_API_URL is not set: point it at the Prefect server (start one with `broadcasts server`)")


def require_webhook_secret(config: Settings) -> None:
    from deployments.webhook import MIN_SECRET_BYTES

    secret = config.webhook_secret.get_secret_value() if config.webhook_secret else ""
    if len(secret.encode()) < MIN_SECRET_BYTES:
        fail(f"WEBHOOK_SECRET must be set to at least {MIN_SECRET_BYTES} bytes "
             "(or run with --no-webhook)")


if __name__ == "__main__":
    app()

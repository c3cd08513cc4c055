"""The `broadcasts` command: its commands, their options and the glue between them (the exit code of
a run's report). How every command meets the operator (help, one-line errors, exit codes 1 and 2)
is deployments/command.py; what it prints, deployments/report.py; Ctrl-C, deployments/prefect_api.py.
Prefect is imported only by the commands that run flows, so the others start fast."""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any

import typer

from broadcasts.errors import DispatchError
from broadcasts.settings import Settings
from broadcasts.validation import parse_duration, parse_polygon, parse_uuid
from deployments.command import EXIT_NOT_ACKNOWLEDGED, OperatorHelp, engine, fail, settings
from deployments.prefect_api import direct_runs, prefect_errors, require_api, temporary_or_configured
from deployments.prefect_failover import BadReplicaList, forwarding_prefect_api

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

@app.callback()
def _check_configuration(ctx: typer.Context) -> None:
    settings()  # every command fails at start on a bad variable, naming it
    if ctx.invoked_subcommand not in ("server", "simulator"):
        try:  # PREFECT_API_URLS: Prefect is reached through a local forwarder until the command ends
            ctx.with_resource(forwarding_prefect_api())
        except BadReplicaList as error:
            fail(f"PREFECT_API_URLS: {error}")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the database schema to the newest revision."""
    from broadcasts.db import get_engine
    from broadcasts.migrate import display_url, upgrade

    database = get_engine(settings().database_url)
    before, after = upgrade(database)
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
    message_id = parse_uuid(message, "--message") if message else None
    service_id = parse_uuid(service, "--service") if service else None
    provider_list = [p.strip().lower() for p in providers.split(",") if p.strip()] if providers else None
    with unit_of_work(engine()) as session:
        created = create_event(
            session, message_type=type_, now=utcnow(), body=body, polygons=polygons,
            finishes_in=duration, message_id=message_id, service_id=service_id,
            channel=channel, providers=provider_list, stubbed=stubbed,
        )
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
    """The broadcast message's status and its history (completed on expiry), then per provider:
    status, identifier, message number, and the history of every attempt."""
    from broadcasts.db import unit_of_work
    from broadcasts.status import event_status, message_status
    from deployments.report import status_output

    eid = parse_uuid(event_id, "event id")
    with unit_of_work(engine()) as session:
        statuses, message = event_status(session, eid), message_status(session, eid)
    typer.echo(status_output(eid, statuses, as_json, message))


def run_and_report(flow: Any, parameters: dict[str, Any], event_id: uuid.UUID, providers: list[str] | None,
                   as_json: bool, interrupted: str) -> None:
    with temporary_or_configured(interrupted), prefect_errors(), direct_runs() as prepared:
        state = prepared(flow)(**parameters, return_state=True)
    report(state, event_id, providers, as_json)


def report(state: Any, event_id: uuid.UUID, providers: list[str] | None, as_json: bool) -> None:
    """Prints the run's state and the per-provider table; exit 1 unless every provider acknowledged
    or was superseded by a later cancel (finished, not failed: docs/behaviour.md §4 rule 6)."""
    from broadcasts.db import unit_of_work
    from broadcasts.status import event_status

    try:
        with unit_of_work(engine()) as session:
            rows = [s.as_row() for s in event_status(session, event_id)]
    except DispatchError as error:
        fail(f"{state.message}; {error}")
    if providers is not None:
        rows = [r for r in rows if r["provider"] in providers]
    from deployments.report import run_output

    typer.echo(run_output(state, rows, as_json))
    everyone = providers or [r["provider"] for r in rows]
    acked = {r["provider"] for r in rows if r["status"] in ("returned-ack", "superseded")}
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
    from broadcasts.event_plan import plan_event

    eid = parse_uuid(event_id, "event id")
    config = settings()
    database = engine()  # checked even when dispatch is off: the report reads it afterwards
    providers: list[str] | None = None
    if config.cbc_proxy_enabled:
        with unit_of_work(database) as session:
            providers = plan_event(session, eid, config.enabled_cbcs).providers
    from flows.send_broadcast_event import send_broadcast_event

    # An operator's explicit re-send: technical-failure providers are sent again too.
    run_and_report(send_broadcast_event, {"broadcast_event_id": str(eid), "replay_failed": True}, eid,
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

    eid = parse_uuid(event_id, "event id")
    get_provider(provider)
    with unit_of_work(engine()) as session:
        dao.get_event(session, eid)
    from flows.send_provider_message import send_provider_message

    run_and_report(
        send_provider_message, {"broadcast_event_id": str(eid), "provider": provider}, eid, [provider], as_json,
        interrupted=f"replay of event {eid} to {provider} stopped; run it again to continue",
    )


@app.command("simulator")
def simulator(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9001,
) -> None:
    """Run the CBC proxy simulator (the Lambda Invoke API of the eight proxies and `canary`)."""
    from simulator.app import run

    run(host=host, port=port, prefix=settings().cbc_proxy_function_prefix)


@app.command("bootstrap")
def bootstrap_command() -> None:
    """Create the work pool, its queues (alerts before link-tests) and the automations (zombie runs; operator alerts with ALERT_NOTIFICATION_BLOCK) that are missing,
    against PREFECT_API_URL; print what was created or found. Safe to repeat."""
    from deployments.bootstrap import bootstrap
    from deployments.prefect_api import client_settings

    require_api()
    config = settings()
    with client_settings(), prefect_errors():  # the heartbeat the zombie-run automation expects
        for step in bootstrap(config.alert_notification_block, config.crashed_after_missed_heartbeats):
            typer.echo(str(step))


@app.command("serve")
def serve_command(
    webhook: Annotated[bool, typer.Option(help="Also run the signed webhook receiver.")] = True,
    webhook_host: Annotated[str, typer.Option(help="Interface the webhook listens on.")] = "127.0.0.1",
    webhook_port: Annotated[int, typer.Option(help="Port the webhook listens on.", min=1, max=65535)] = 8000,
    dispatcher: Annotated[bool, typer.Option(
        help="Run alert runs in this process the moment they are created, and resume and expiry runs "
        "once due. With --no-dispatcher Prefect's runner starts each in a new process after a poll: "
        "1-2 s later per alert.")] = True,
) -> None:
    """Run the service on this machine against PREFECT_API_URL: bootstrap, the webhook, alert runs
    started in this process as soon as they are created (see `dispatcher`), resume and expiry on
    their schedules in this process too, and link tests on theirs, until SIGTERM or Ctrl-C."""
    from deployments import serve

    config = settings()
    if webhook:
        signing_key(config, "the webhook needs one (or run with --no-webhook)")
    require_api()
    with prefect_errors():
        serve.run(config, webhook=(webhook_host, webhook_port) if webhook else None, dispatcher=dispatcher,
                  echo=typer.echo)


@app.command("dispatcher")
def dispatcher_command(
    max_runs: Annotated[int | None, typer.Option(
        help="Runs starting at once (default 64): a run counts for its first 10 s, so runs retrying a network "
             "that is down leave room for new alerts, up to 256 runs in all.", min=1)] = None,
) -> None:
    """Run alert runs in this process as soon as they are created, and resume and expiry runs once
    due (`serve` does this too); add one on another machine for capacity: each run is claimed by
    one process only.

    SIGTERM or Ctrl-C: takes no more runs and finishes those under way; a second signal ends it
    at once (its runs are then recovered as after a crash)."""
    from deployments.dispatcher import run_until_signalled

    require_api()
    settings()
    engine()  # the runs write there: a missing schema is one line, before any run is taken
    with prefect_errors():
        run_until_signalled(max_runs, echo=typer.echo)


@app.command("server")
def server_command(
    host: Annotated[str, typer.Option(help="Interface to listen on (keep the API off public networks).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 4200,
    ui: Annotated[bool, typer.Option(help="Serve the Prefect UI too.")] = True,
    redis_url: Annotated[str | None, typer.Option(
        help="High availability: keep events, concurrency leases and the services' jobs in this Redis "
             "(redis://host:6379/N; jobs use N+1). Give every replica and the services process the same URL.")] = None,
    services: Annotated[bool, typer.Option(
        help="Run the background services (scheduler, automations, late and zombie runs) in this process. "
             "With several replicas: --no-services on each, and one --services-only process.")] = True,
    services_only: Annotated[bool, typer.Option(
        "--services-only", help="Run only the background services, no API (with --redis-url).")] = False,
) -> None:
    """Start the Prefect server with the settings this service needs (filesystem lease storage, 1 s
    slot waits, no analytics); see the README for its database, auth and high-availability settings."""
    from deployments.server import BadRedisUrl, start

    if services_only and not redis_url:
        fail("--services-only needs --redis-url: services apart from the API share its events through Redis")
    try:
        start(host, port, ui, services=services, redis_url=redis_url, services_only=services_only)
    except BadRedisUrl as error:
        fail(f"--redis-url: {error}")


@app.command("webhook")
def webhook_command(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
) -> None:
    """Run the signed webhook receiver alone: POST /broadcast-events starts one send-broadcast-event
    run per event. Needs WEBHOOK_SECRET (32 bytes or more) and PREFECT_API_URL."""
    from deployments.webhook import run

    run(host, port)


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

    eid = parse_uuid(event_id, "event id")
    config = settings()
    key = signing_key(config, "the webhook would refuse the request")
    try:
        code, answer = post_event(url, eid, key)
    except httpx.HTTPError as error:
        fail(f"cannot reach the webhook at {url}: {error}")
    typer.echo(f"{code} {json.dumps(answer)}")
    if code != 202:
        raise typer.Exit(EXIT_NOT_ACKNOWLEDGED)
    if wait:
        from deployments.prefect_api import wait_for_run

        require_api()
        with prefect_errors():
            state, address = wait_for_run(uuid.UUID(answer["flow_run_id"]))
        typer.echo(f"run: {address}")
        report(state, eid, None, as_json)


@app.command("link-test")
def link_test_command(
    provider: Annotated[list[str] | None, typer.Option(help="Test only this provider; repeat for more.")] = None,
    history: Annotated[bool, typer.Option("--history", help="Show stored results instead of testing.")] = False,
    since: Annotated[str, typer.Option(help="With --history: how far back, e.g. 24h, 7d.")] = "24h",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Test every route (each proxy Lambda and CBC, separately) of every enabled provider now, and print
    the table; exit code 1 if a route failed. With --history, each route's pass rate instead."""
    if history:
        return print_link_test_history(provider, since, as_json)
    from broadcasts.providers import get_provider
    from flows.link_tests import run_link_tests

    for name in provider or []:
        get_provider(name)
    engine()  # the results are stored there: a missing schema is one line, before any call
    with temporary_or_configured(interrupted="link tests stopped; run `broadcasts link-test` again"), prefect_errors():
        state, rows = run_link_tests(provider)
    from deployments.report import link_test_output

    typer.echo(link_test_output(state, rows, as_json))
    if not state.is_completed():
        raise typer.Exit(EXIT_NOT_ACKNOWLEDGED)


def print_link_test_history(providers: list[str] | None, since: str, as_json: bool) -> None:
    from broadcasts import route_advisor
    from broadcasts.db import unit_of_work
    from broadcasts.link_test_history import link_test_history
    from broadcasts.models import utcnow

    try:
        window = parse_duration(since)
    except ValueError as error:
        fail(str(error))
    with unit_of_work(engine()) as session:
        found = [h for p in (providers or [None]) for h in link_test_history(session, utcnow() - window, p)]
        advice = [a for a in route_advisor.advice(session) if not providers or a.provider in providers]
    from deployments.report import link_test_history_output

    typer.echo(link_test_history_output(found, since, as_json, advice, utcnow()))


def signing_key(config: Settings, why: str) -> bytes:
    from deployments.signing import SecretNotSet, secret_key

    try:
        return secret_key(config)
    except SecretNotSet as error:
        fail(f"{error}: {why}")


if __name__ == "__main__":
    app()

"""The `broadcasts` command. Prefect is imported only by the commands that run flows, so the
others start fast."""

from __future__ import annotations

import json
import sys
import uuid
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError

from broadcasts.errors import DispatchError, InvalidInput
from broadcasts.settings import Settings, describe_invalid_settings, get_settings
from broadcasts.validation import parse_duration, parse_polygon, parse_uuid

app = typer.Typer(
    help="Dispatcher for emergency cell-broadcast alerts: sends each event to every mobile "
    "network's CBC proxy, in order, exactly once.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
event_app = typer.Typer(help="Broadcast events.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(event_app, name="event")

EXIT_NOT_ACKNOWLEDGED = 1
EXIT_BAD_INPUT = 2


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as error:
        fail(describe_invalid_settings(error))


def engine():  # type: ignore[no-untyped-def]
    from broadcasts.db import get_engine

    return get_engine(settings().database_url)


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
    from broadcasts.migrate import upgrade

    upgrade(engine())
    typer.echo(f"database at {engine().url.render_as_string(hide_password=True)} is up to date")


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
    for s in statuses:
        typer.echo(f"{s.provider}: {s.status}  identifier {s.identifier}"
                   + (f"  message number {s.message_number}" if s.message_number else ""))
        for h in s.history:
            parts = [h.created_at.isoformat(timespec="milliseconds"), h.status]
            parts += [f"attempt {h.attempt}"] if h.attempt else []
            parts += [f"via {h.route}"] if h.route else []
            parts += [json.dumps(h.detail)] if h.detail else []
            typer.echo("    " + "  ".join(parts))


def print_rows(rows: list[dict[str, Any]], state: Any, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({"state": state.name, "message": state.message, "providers": rows}, indent=2))
        return
    typer.echo(f"{state.name}: {state.message}")
    for r in rows:
        typer.echo(f"  {r['provider']:<9} {r['status']:<17} {r['identifier'] or '-'}  "
                   f"number {r['message_number'] or '-'}  attempts {r['attempts']}"
                   + (f"  last error: {r['last_error']}" if r["last_error"] else ""))


def run_and_report(flow_call: Any, event_id: uuid.UUID, providers: list[str] | None, as_json: bool) -> None:
    from broadcasts.db import unit_of_work
    from broadcasts.status import event_status

    state = flow_call()
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
    """Send an event to every available provider now (in this process, against the configured
    Prefect API or a temporary one). Exit code 0 only when every provider acknowledged."""
    from broadcasts.db import unit_of_work
    from broadcasts.dispatch import providers_for_event

    eid = as_uuid(event_id, "event id")
    config = settings()
    providers: list[str] | None = None
    if config.cbc_proxy_enabled:
        try:
            with unit_of_work(engine()) as session:
                providers = providers_for_event(session, eid, config.enabled_cbcs)
        except DispatchError as error:
            fail(str(error))
    from flows.send_broadcast_event import send_broadcast_event

    run_and_report(lambda: send_broadcast_event(str(eid), return_state=True), eid, providers, as_json)


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
        lambda: send_provider_message(str(eid), provider, return_state=True), eid, [provider], as_json
    )


@app.command("simulator")
def simulator(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9001,
) -> None:
    """Run the CBC proxy simulator (the Lambda Invoke API of the eight proxies and `canary`)."""
    from simulator.app import run

    run(host=host, port=port, prefix=settings().cbc_proxy_function_prefix)


if __name__ == "__main__":
    app()

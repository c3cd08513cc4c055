"""How every `broadcasts` command meets an operator: the help in the order the commands are met,
one line and exit code 2 for an error the operator can fix (no traceback; any command, so a
DispatchError escaping `serve` is one line too), exit code 1 for a send not acknowledged, and the
settings and the app database checked before a command does anything."""

from __future__ import annotations

import inspect
import sys
from typing import Any, NoReturn

import typer
from pydantic import ValidationError
from typer.core import TyperGroup

from broadcasts.errors import DispatchError, InvalidInput
from broadcasts.settings import Settings, describe_invalid_settings, get_settings

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

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as error:
            if isinstance(error, operator_errors()):
                fail(str(error))
            raise


def operator_errors() -> tuple[type[Exception], ...]:
    """The errors whose message says all an operator needs (what was wrong, what to run): any
    command meeting one prints `error: <message>` and exits 2, with no traceback. Only a module
    already imported can have raised its error, so none is imported here (the webhook's would
    import Prefect, seconds for an error that needs none)."""
    found: list[type[Exception]] = [DispatchError, InvalidInput]
    for module, name in RAISED_BY:
        if module in sys.modules:
            found.append(getattr(sys.modules[module], name))
    return tuple(found)


# The other operator errors, by the module that defines each (tests/deployments/test_cli_errors.py
# checks every one resolves).
RAISED_BY = (("broadcasts.migrate", "DatabaseNotReady"), ("deployments.prefect_api", "PrefectApiError"),
             ("deployments.webhook", "WebhookNotConfigured"), ("simulator.app", "CannotListen"))


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
    """The app database, checked first: a missing schema or an unreachable server is one line."""
    from broadcasts.db import get_engine
    from broadcasts.migrate import check_schema

    database = get_engine(settings().database_url)
    check_schema(database)
    return database

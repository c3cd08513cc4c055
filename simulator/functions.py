"""The Lambda functions the simulator stands in for, and the message format each one expects.

Every per-network difference the simulator knows about lives in this table: which functions
exist, whether a function takes CAP or IBAG, its English and Welsh language values, and whether
its payload carries a message number. The other modules look a function up here instead of
testing names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MessageFormat:
    name: str  # the payload's `message_format` value
    languages: tuple[str, str]  # English value, Welsh value
    numbered: bool  # the payload carries an 8-hex `message_number`


CAP = MessageFormat("cap", ("en-GB", "cy-GB"), numbered=False)
IBAG = MessageFormat("ibag", ("English", "Welsh"), numbered=True)


@dataclass(frozen=True)
class Function:
    name: str  # without the deployment prefix, e.g. "ee-1-proxy"
    message_format: MessageFormat | None  # None: accepts any JSON (the canary)


def _proxies(network: str, message_format: MessageFormat) -> dict[str, Function]:
    names = (f"{network}-1-proxy", f"{network}-2-proxy")
    return {name: Function(name, message_format) for name in names}


FUNCTIONS: dict[str, Function] = {
    **_proxies("ee", CAP),
    **_proxies("three", CAP),
    **_proxies("o2", CAP),
    **_proxies("vodafone", IBAG),
    "canary": Function("canary", None),
}


def resolve(function_name: str, prefix: str) -> Function | None:
    """The function called as `function_name` (prefix included), or None if there is none.

    When a prefix is configured the bare name is unknown, as it would be in a real account.
    """
    if not function_name.startswith(prefix):
        return None
    return FUNCTIONS.get(function_name[len(prefix) :])

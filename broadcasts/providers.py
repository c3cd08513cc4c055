"""The four mobile networks and how each one's CBC proxy differs: one frozen row per provider.

Every provider difference (proxy function names, payload format, language values, whether a
message number is sent) lives in this table; nothing else in the code branches on a provider name.

A network has two proxy Lambdas, and behind each of them one or two CBCs (`cbc_a`, `cbc_b`): a
route is one (Lambda, CBC) pair, so a network has four routes, or two when it has one CBC
(configuration: CBC_B_PROVIDERS). `Provider.routes` lists them in the default order.
"""

from __future__ import annotations

from dataclasses import dataclass

from broadcasts.errors import UnknownProvider


CBC_TARGETS = ("cbc_a", "cbc_b")


@dataclass(frozen=True)
class Route:
    """One way to a network: a proxy Lambda and the CBC (`cbc_target`) it forwards to."""

    function: str  # the proxy function-name suffix, e.g. "ee-1-proxy"
    target: str  # "cbc_a" or "cbc_b"
    name: str  # e.g. "lambda1-cbc_a": what link tests and the route advisor call it


@dataclass(frozen=True)
class Provider:
    name: str
    lambdas: tuple[str, str]  # proxy function-name suffixes: the first Lambda, then its failover twin
    message_format: str  # "cap" or "ibag"
    english: str
    welsh: str
    numbered: bool  # sends an 8-hex message number from the shared sequence

    def language(self, welsh: bool) -> str:
        return self.welsh if welsh else self.english

    def routes(self, second_cbc: bool) -> tuple[Route, ...]:
        """Every route in the default order: the first Lambda's CBCs, then the second's."""
        targets = CBC_TARGETS if second_cbc else CBC_TARGETS[:1]
        return tuple(
            Route(function, target, f"lambda{number}-{target}")
            for number, function in enumerate(self.lambdas, start=1)
            for target in targets
        )


def _cap(name: str) -> Provider:
    return Provider(name, (f"{name}-1-proxy", f"{name}-2-proxy"), "cap", "en-GB", "cy-GB", False)


PROVIDERS: dict[str, Provider] = {
    "ee": _cap("ee"),
    "three": _cap("three"),
    "o2": _cap("o2"),
    "vodafone": Provider(
        "vodafone", ("vodafone-1-proxy", "vodafone-2-proxy"), "ibag", "English", "Welsh", True
    ),
}

CHANNELS = ("test", "operator", "severe", "government")


def get_provider(name: str) -> Provider:
    try:
        return PROVIDERS[name]
    except KeyError:
        raise UnknownProvider(name, list(PROVIDERS)) from None

"""The four mobile networks and how each one's CBC proxy differs: one frozen row per provider.

Every provider difference (proxy function names, payload format, language values, whether a
message number is sent) lives in this table; nothing else in the code branches on a provider name.
"""

from __future__ import annotations

from dataclasses import dataclass

from broadcasts.errors import UnknownProvider


@dataclass(frozen=True)
class Provider:
    name: str
    routes: tuple[str, str]  # proxy function-name suffixes: primary, then failover
    message_format: str  # "cap" or "ibag"
    english: str
    welsh: str
    numbered: bool  # sends an 8-hex message number from the shared sequence

    def language(self, welsh: bool) -> str:
        return self.welsh if welsh else self.english


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

"""CAP 1.2 XML as a CAP proxy (EE, Three, O2) would send it, validated against the OASIS schema.

Glossary (OASIS Common Alerting Protocol 1.2):
- alert: the root element; one message. `identifier` + `sender` + `sent` name it uniquely.
- msgType: Alert (new), Update (replaces earlier messages), Cancel (withdraws them).
- status: Actual for real messages; Test for a link test, which handsets must ignore.
- references: the earlier messages an Update or Cancel is about, as space-separated
  `sender,identifier,sent` triples.
- info: what the alert says (language, event, headline, description, expiry) and where it
  applies (`area`, each with a closed `polygon` of `lat,lon` pairs).

The schema (`schemas/CAP-v1.2.xsd`, © OASIS Open 2010) fixes element order; builders below
append children in that order.
"""

from __future__ import annotations

from datetime import datetime, timezone
from functools import cache
from importlib import resources
from typing import Any

from lxml import etree

from simulator.polygons import polygon_text

CAP_NAMESPACE = "urn:oasis:names:tc:emergency:cap:1.2"
SENDER = "https://www.notifications.service.gov.uk/"
SENDER_NAME = "GOV.UK Emergency Alerts"

# The `event` code handsets use to pick the alert tone and opt-out category for a channel.
EVENT_CODE_BY_CHANNEL = {
    "test": "RMT",
    "operator": "OPR",
    "severe": "Alert",
    "government": "EAN",
}

_MSG_TYPE = {"alert": "Alert", "update": "Update", "cancel": "Cancel", "test": "Alert"}


class CapSchemaError(ValueError):
    """A rendered document the OASIS schema rejects; the message lists the schema's reasons."""


@cache
def cap_schema() -> etree.XMLSchema:
    """The OASIS CAP 1.2 schema, parsed once on first use."""
    xsd = resources.files("simulator").joinpath("schemas", "CAP-v1.2.xsd").read_bytes()
    return etree.XMLSchema(etree.fromstring(xsd))


def render_cap(payload: dict[str, Any], now: datetime | None = None) -> bytes:
    """The CAP document for a payload that `payload_rules` accepted, checked against the XSD.

    `now` (default: the current time) becomes `sent` for a link test, whose payload has none.
    Raises CapSchemaError when the schema rejects the document.
    """
    alert = build_cap(payload, now)
    validate_cap(alert)
    return etree.tostring(alert, xml_declaration=True, encoding="UTF-8")


def build_cap(payload: dict[str, Any], now: datetime | None = None) -> etree._Element:
    """The CAP element tree for a valid payload, not yet checked against the schema."""
    message_type = payload["message_type"]
    alert = etree.Element(_tag("alert"), nsmap={None: CAP_NAMESPACE})
    _add(alert, "identifier", payload["identifier"])
    _add(alert, "sender", SENDER)
    # A link test has no `sent` of its own; the proxy stamps it on the way out.
    _add(alert, "sent", payload.get("sent") or cap_datetime(now or datetime.now(timezone.utc)))
    _add(alert, "status", "Test" if message_type == "test" else "Actual")
    _add(alert, "msgType", _MSG_TYPE[message_type])
    _add(alert, "scope", "Public")
    if "references" in payload:
        _add(alert, "references", references_text(payload["references"]))
    if message_type in ("alert", "update"):
        _add_info(alert, payload)
    return alert


def cap_datetime(moment: datetime) -> str:
    """`moment` in UTC as CAP writes it: `YYYY-MM-DDThh:mm:ss-00:00`."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S-00:00")


def references_text(references: list[dict[str, Any]]) -> str:
    """`sender,identifier,sent` triples, space separated, in the payload's order."""
    return " ".join(f"{SENDER},{ref['message_id']},{ref['sent']}" for ref in references)


def validate_cap(document: etree._Element) -> None:
    """Raise CapSchemaError unless `document` is valid CAP 1.2."""
    schema = cap_schema()
    if not schema.validate(document):
        reasons = "; ".join(f"line {e.line}: {e.message}" for e in schema.error_log)
        raise CapSchemaError(f"CAP document rejected by the OASIS CAP 1.2 schema: {reasons}")


def _add_info(alert: etree._Element, payload: dict[str, Any]) -> None:
    info = _add(alert, "info")
    _add(info, "language", payload["language"])
    _add(info, "category", "Safety")
    _add(info, "event", EVENT_CODE_BY_CHANNEL[payload["channel"]])
    _add(info, "urgency", "Immediate")
    _add(info, "severity", "Extreme")
    _add(info, "certainty", "Observed")
    _add(info, "expires", payload["expires"])
    _add(info, "senderName", SENDER_NAME)
    _add(info, "headline", payload["headline"])
    _add(info, "description", payload["description"])
    for number, area in enumerate(payload["areas"], start=1):
        area_element = _add(info, "area")
        _add(area_element, "areaDesc", f"area-{number}")
        _add(area_element, "polygon", polygon_text(area["polygon"]))


def _add(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    element = etree.SubElement(parent, _tag(name))
    element.text = text
    return element


def _tag(name: str) -> str:
    return f"{{{CAP_NAMESPACE}}}{name}"

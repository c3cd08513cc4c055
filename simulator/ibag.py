"""IBAG XML as the Vodafone proxy would send it.

Glossary (Vodafone's IBAG gateway interface, a CAP derivative):
- IBAG_message_number: the 8-hex number Vodafone uses to name a message (the payload's
  `message_number`); updates and cancels point at an earlier one through
  IBAG_referenced_message_number.
- IBAG_channel_category: the numeric cell-broadcast category for the service's channel.
- IBAG_text_alert_message_length: the length of the text in UTF-8 bytes, not characters.

There is no published schema to check against, so tests pin the structure instead.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from lxml import etree

from simulator.cap import SENDER, cap_datetime
from simulator.polygons import polygon_text

IBAG_NAMESPACE = "ibag:1.0"
CAP_ALERT_URI = "https://www.gov.uk/alerts"

CHANNEL_CATEGORY_BY_CHANNEL = {
    "test": "4380",
    "operator": "4382",
    "severe": "4378",
    "government": "4370",
}

_MESSAGE_TYPE = {"alert": "Alert", "update": "Update", "cancel": "Cancel", "test": "Test"}


def render_ibag(payload: dict[str, Any], now: datetime | None = None) -> bytes:
    """The IBAG document for a payload that `payload_rules` accepted.

    `now` (default: the current time) becomes the sent time of a link test, whose payload has
    none.
    """
    message_type = payload["message_type"]
    sent = payload.get("sent") or cap_datetime(now or datetime.now(timezone.utc))
    root = etree.Element(_tag("IBAG_Alert_Attributes"), nsmap={None: IBAG_NAMESPACE})
    _add(root, "IBAG_protocol_version", "1.0")
    _add(root, "IBAG_sending_gateway_id", SENDER)
    _add(root, "IBAG_message_number", payload["message_number"])
    if "references" in payload:
        # Vodafone links a message to the latest one in its series, which is the last reference.
        latest = payload["references"][-1]
        _add(root, "IBAG_referenced_message_number", latest["message_number"])
        _add(root, "IBAG_referenced_message_cap_identifier", latest["message_id"])
    _add(root, "IBAG_sender", SENDER)
    _add(root, "IBAG_sent_date_time", sent)
    _add(root, "IBAG_status", "Test" if message_type == "test" else "Actual")
    _add(root, "IBAG_message_type", _MESSAGE_TYPE[message_type])
    _add(root, "IBAG_cap_alert_uri", CAP_ALERT_URI)
    _add(root, "IBAG_cap_identifier", payload["identifier"])
    _add(root, "IBAG_cap_sent_date_time", sent)
    if message_type in ("alert", "update"):
        _add_alert_info(root, payload)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _add_alert_info(root: etree._Element, payload: dict[str, Any]) -> None:
    info = _add(root, "IBAG_Alert_Info")
    _add(info, "IBAG_priority", "Normal")
    _add(info, "IBAG_category", "Safety")
    _add(info, "IBAG_severity", "Extreme")
    _add(info, "IBAG_urgency", "Immediate")
    _add(info, "IBAG_certainty", "Observed")
    _add(info, "IBAG_expires_date_time", payload["expires"])
    _add(info, "IBAG_language", payload["language"])
    description = payload["description"]
    _add(info, "IBAG_text_alert_message_length", str(len(description.encode("utf-8"))))
    _add(info, "IBAG_text_alert_message", description)
    _add(info, "IBAG_channel_category", CHANNEL_CATEGORY_BY_CHANNEL[payload["channel"]])
    for number, area in enumerate(payload["areas"], start=1):
        area_element = _add(info, "IBAG_Alert_Area")
        _add(area_element, "IBAG_area_description", f"area-{number}")
        _add(area_element, "IBAG_polygon", polygon_text(area["polygon"]))


def _add(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    element = etree.SubElement(parent, _tag(name))
    element.text = text
    return element


def _tag(name: str) -> str:
    return f"{{{IBAG_NAMESPACE}}}{name}"

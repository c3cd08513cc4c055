"""CAP 1.2 rendering for the CAP proxies (EE, Three, O2), checked against the OASIS schema."""

from datetime import datetime, timezone

import pytest
from lxml import etree

from simulator.cap import CapSchemaError, build_cap, cap_schema, render_cap, validate_cap

NS = {"cap": "urn:oasis:names:tc:emergency:cap:1.2"}
SENDER = "https://www.notifications.service.gov.uk/"


def _parse(xml: bytes) -> etree._Element:
    return etree.fromstring(xml)


def _text(document: etree._Element, path: str) -> list[str]:
    return document.xpath(f"{path}/text()", namespaces=NS)


@pytest.mark.parametrize("message_type", ["alert", "update", "cancel", "test"])
def test_every_message_type_renders_cap_that_the_oasis_schema_accepts(make_payload, message_type):
    document = _parse(render_cap(make_payload(message_type)))
    assert cap_schema().validate(document), cap_schema().error_log
    assert document.tag == "{urn:oasis:names:tc:emergency:cap:1.2}alert"


def test_schema_rejects_a_document_with_elements_out_of_order(make_payload):
    document = build_cap(make_payload("alert"))
    document.insert(0, document.find("cap:sender", NS))  # sender before identifier
    with pytest.raises(CapSchemaError, match="sender"):
        validate_cap(document)


def test_schema_rejects_an_unknown_status(make_payload):
    document = build_cap(make_payload("alert"))
    document.find("cap:status", NS).text = "Live"
    with pytest.raises(CapSchemaError, match="status"):
        validate_cap(document)


@pytest.mark.parametrize(
    "message_type, status, msg_type",
    [
        ("alert", "Actual", "Alert"),
        ("update", "Actual", "Update"),
        ("cancel", "Actual", "Cancel"),
        ("test", "Test", "Alert"),
    ],
)
def test_status_and_msg_type_follow_the_message_type(make_payload, message_type, status, msg_type):
    document = _parse(render_cap(make_payload(message_type)))
    assert _text(document, "/cap:alert/cap:status") == [status]
    assert _text(document, "/cap:alert/cap:msgType") == [msg_type]
    assert _text(document, "/cap:alert/cap:scope") == ["Public"]


def test_alert_carries_identifier_sender_sent_and_info(make_payload):
    payload = make_payload("alert", description="Flood warning", language="cy-GB")
    document = _parse(render_cap(payload))
    assert _text(document, "/cap:alert/cap:identifier") == [payload["identifier"]]
    assert _text(document, "/cap:alert/cap:sender") == [SENDER]
    assert _text(document, "/cap:alert/cap:sent") == ["2026-11-27T10:00:00-00:00"]
    info = "/cap:alert/cap:info"
    assert _text(document, f"{info}/cap:language") == ["cy-GB"]
    assert _text(document, f"{info}/cap:category") == ["Safety"]
    assert _text(document, f"{info}/cap:urgency") == ["Immediate"]
    assert _text(document, f"{info}/cap:severity") == ["Extreme"]
    assert _text(document, f"{info}/cap:certainty") == ["Observed"]
    assert _text(document, f"{info}/cap:expires") == ["2026-11-27T12:00:00-00:00"]
    assert _text(document, f"{info}/cap:headline") == ["GOV.UK Notify Broadcast"]
    assert _text(document, f"{info}/cap:description") == ["Flood warning"]
    assert not document.xpath("/cap:alert/cap:references", namespaces=NS)


@pytest.mark.parametrize(
    "channel, event",
    [("test", "RMT"), ("operator", "OPR"), ("severe", "Alert"), ("government", "EAN")],
)
def test_channel_maps_to_event_code(make_payload, channel, event):
    document = _parse(render_cap(make_payload("alert", channel=channel)))
    assert _text(document, "/cap:alert/cap:info/cap:event") == [event]


def test_update_references_render_as_sender_identifier_sent_triples(make_payload):
    first, second = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"
    references = [
        {"message_id": first, "sent": "2026-11-27T08:00:00-00:00"},
        {"message_id": second, "sent": "2026-11-27T09:00:00-00:00"},
    ]
    document = _parse(render_cap(make_payload("update", references=references)))
    assert _text(document, "/cap:alert/cap:references") == [
        f"{SENDER},{first},2026-11-27T08:00:00-00:00 {SENDER},{second},2026-11-27T09:00:00-00:00"
    ]


def test_cancel_has_references_and_no_info(make_payload):
    document = _parse(render_cap(make_payload("cancel")))
    assert len(_text(document, "/cap:alert/cap:references")) == 1
    assert not document.xpath("/cap:alert/cap:info", namespaces=NS)


def test_link_test_is_stamped_with_the_render_time(make_payload):
    now = datetime(2026, 11, 27, 10, 15, 30, tzinfo=timezone.utc)
    document = _parse(render_cap(make_payload("test"), now=now))
    assert _text(document, "/cap:alert/cap:sent") == ["2026-11-27T10:15:30-00:00"]
    assert not document.xpath("/cap:alert/cap:info", namespaces=NS)


def test_open_polygon_is_closed_by_repeating_the_first_point(make_payload):
    areas = [{"polygon": [[51.5, -0.1], [51.6, -0.1], [51.6, 0.0]]}]
    document = _parse(render_cap(make_payload("alert", areas=areas)))
    assert _text(document, "/cap:alert/cap:info/cap:area/cap:polygon") == [
        "51.5,-0.1 51.6,-0.1 51.6,0.0 51.5,-0.1"
    ]


def test_already_closed_polygon_is_not_closed_twice(make_payload):
    areas = [{"polygon": [[51.5, -0.1], [51.6, -0.1], [51.6, 0], [51.5, -0.1]]}]
    document = _parse(render_cap(make_payload("alert", areas=areas)))
    assert _text(document, "/cap:alert/cap:info/cap:area/cap:polygon") == [
        "51.5,-0.1 51.6,-0.1 51.6,0 51.5,-0.1"
    ]


def test_each_polygon_becomes_its_own_numbered_area(make_payload):
    areas = [
        {"polygon": [[51.5, -0.1], [51.6, -0.1], [51.6, 0.0]]},
        {"polygon": [[52.0, 1e-05], [52.1, 0.5], [52.2, 0.25]]},
    ]
    document = _parse(render_cap(make_payload("alert", areas=areas)))
    area = "/cap:alert/cap:info/cap:area"
    assert _text(document, f"{area}/cap:areaDesc") == ["area-1", "area-2"]
    # Exponent notation is not decimal degrees; small values are written out in full.
    assert _text(document, f"{area}[2]/cap:polygon") == [
        "52.0,0.00001 52.1,0.5 52.2,0.25 52.0,0.00001"
    ]


def test_text_that_xml_cannot_carry_is_refused_not_rendered(make_payload):
    with pytest.raises(ValueError):
        render_cap(make_payload("alert", description="bell \x07"))

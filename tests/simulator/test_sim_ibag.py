"""IBAG rendering for the Vodafone proxies."""

from datetime import datetime, timezone

import pytest
from lxml import etree

from simulator.ibag import render_ibag

NS = {"ibag": "ibag:1.0"}
ROOT = "/ibag:IBAG_Alert_Attributes"
INFO = f"{ROOT}/ibag:IBAG_Alert_Info"


def _text(xml: bytes, path: str) -> list[str]:
    return etree.fromstring(xml).xpath(f"{path}/text()", namespaces=NS)


def _ref(message_id: str, sent: str, number: str) -> dict:
    return {"message_id": message_id, "sent": sent, "message_number": number}


def test_alert_carries_number_status_type_and_alert_info(make_payload):
    payload = make_payload("alert", "ibag", message_number="0000007b", language="Welsh")
    xml = render_ibag(payload)
    assert _text(xml, f"{ROOT}/ibag:IBAG_protocol_version") == ["1.0"]
    assert _text(xml, f"{ROOT}/ibag:IBAG_message_number") == ["0000007b"]
    assert _text(xml, f"{ROOT}/ibag:IBAG_sent_date_time") == ["2026-11-27T10:00:00-00:00"]
    assert _text(xml, f"{ROOT}/ibag:IBAG_status") == ["Actual"]
    assert _text(xml, f"{ROOT}/ibag:IBAG_message_type") == ["Alert"]
    assert _text(xml, f"{ROOT}/ibag:IBAG_cap_identifier") == [payload["identifier"]]
    assert _text(xml, f"{INFO}/ibag:IBAG_expires_date_time") == ["2026-11-27T12:00:00-00:00"]
    assert _text(xml, f"{INFO}/ibag:IBAG_language") == ["Welsh"]
    assert _text(xml, f"{INFO}/ibag:IBAG_text_alert_message") == ["Flood warning"]
    assert not _text(xml, f"{ROOT}/ibag:IBAG_referenced_message_number")


@pytest.mark.parametrize(
    "channel, category",
    [("test", "4380"), ("operator", "4382"), ("severe", "4378"), ("government", "4370")],
)
def test_channel_maps_to_ibag_channel_category(make_payload, channel, category):
    xml = render_ibag(make_payload("alert", "ibag", channel=channel))
    assert _text(xml, f"{INFO}/ibag:IBAG_channel_category") == [category]


def test_message_length_counts_utf8_bytes_not_characters(make_payload):
    description = "Rhybudd llifogydd ŵ"  # 19 characters; ŵ is 2 bytes in UTF-8
    xml = render_ibag(make_payload("alert", "ibag", description=description, language="Welsh"))
    assert _text(xml, f"{INFO}/ibag:IBAG_text_alert_message_length") == ["20"]
    assert _text(xml, f"{INFO}/ibag:IBAG_text_alert_message") == [description]


def test_cancel_references_the_last_references_message_number(make_payload):
    references = [
        _ref("11111111-1111-4111-8111-111111111111", "2026-11-27T08:00:00-00:00", "0000004e"),
        _ref("22222222-2222-4222-8222-222222222222", "2026-11-27T09:00:00-00:00", "0000004f"),
    ]
    xml = render_ibag(make_payload("cancel", "ibag", references=references))
    assert _text(xml, f"{ROOT}/ibag:IBAG_message_type") == ["Cancel"]
    assert _text(xml, f"{ROOT}/ibag:IBAG_referenced_message_number") == ["0000004f"]
    assert _text(xml, f"{ROOT}/ibag:IBAG_referenced_message_cap_identifier") == [
        "22222222-2222-4222-8222-222222222222"
    ]
    assert not _text(xml, INFO)


def test_update_references_the_last_reference_and_carries_alert_info(make_payload):
    references = [
        _ref("11111111-1111-4111-8111-111111111111", "2026-11-27T08:00:00-00:00", "0000004e"),
        _ref("22222222-2222-4222-8222-222222222222", "2026-11-27T09:00:00-00:00", "00000050"),
    ]
    xml = render_ibag(make_payload("update", "ibag", references=references))
    assert _text(xml, f"{ROOT}/ibag:IBAG_message_type") == ["Update"]
    assert _text(xml, f"{ROOT}/ibag:IBAG_referenced_message_number") == ["00000050"]
    assert _text(xml, f"{INFO}/ibag:IBAG_text_alert_message") == ["Flood warning"]


def test_link_test_has_status_test_and_the_render_time(make_payload):
    now = datetime(2026, 11, 27, 10, 15, 30, tzinfo=timezone.utc)
    xml = render_ibag(make_payload("test", "ibag"), now=now)
    assert _text(xml, f"{ROOT}/ibag:IBAG_status") == ["Test"]
    assert _text(xml, f"{ROOT}/ibag:IBAG_message_type") == ["Test"]
    assert _text(xml, f"{ROOT}/ibag:IBAG_sent_date_time") == ["2026-11-27T10:15:30-00:00"]
    assert not _text(xml, INFO)


def test_each_polygon_becomes_a_closed_numbered_area(make_payload):
    areas = [
        {"polygon": [[51.5, -0.1], [51.6, -0.1], [51.6, 0.0]]},
        {"polygon": [[52, 1], [53, 1], [53, 2], [52, 1]]},
    ]
    xml = render_ibag(make_payload("alert", "ibag", areas=areas))
    area = f"{INFO}/ibag:IBAG_Alert_Area"
    assert _text(xml, f"{area}/ibag:IBAG_area_description") == ["area-1", "area-2"]
    assert _text(xml, f"{area}/ibag:IBAG_polygon") == [
        "51.5,-0.1 51.6,-0.1 51.6,0.0 51.5,-0.1",
        "52,1 53,1 53,2 52,1",
    ]

"""Golden payloads (docs/behaviour.md §3) for every provider and message type, and the provider table."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from broadcasts.errors import PayloadError, UnknownProvider
from broadcasts.models import BroadcastEvent
from broadcasts.payloads import (
    Reference,
    build_link_test_payload,
    build_payload,
    cap_time,
    message_number_hex,
)
from broadcasts.providers import PROVIDERS, get_provider

CAP_PROVIDERS = ["ee", "three", "o2"]
HEADLINE = "GOV.UK Notify Broadcast"
BODY = "Flood warning for the River Thames. Move to higher ground now."
WELSH_BODY = "Rhybudd llifogydd: mae lefel y dŵr yn codi. Symudwch i dir uwch."
POLYGON = [[51.5, -0.1], [51.6, -0.1], [51.6, 0.0]]
SECOND_POLYGON = [[52.0, -1.0], [52.1, -1.0], [52.1, -0.9], [52.0, -1.0]]

EVENT_ID = uuid.UUID("e0000000-0000-4000-8000-000000000001")
IDENTIFIER = uuid.UUID("a0000000-0000-4000-8000-00000000000a")
FIRST_REFERENCE_ID = uuid.UUID("b0000000-0000-4000-8000-00000000000b")
SECOND_REFERENCE_ID = uuid.UUID("c0000000-0000-4000-8000-00000000000c")

SENT_AT = datetime(2026, 11, 27, 10, 0, 0, 123456, tzinfo=UTC)
FINISHES_AT = datetime(2026, 11, 27, 13, 0, 0, 654321, tzinfo=UTC)
REFERENCES = [  # oldest first; Vodafone numbers 78 and 123
    Reference(FIRST_REFERENCE_ID, datetime(2026, 11, 27, 9, 0, 0, 500000, tzinfo=UTC), 78),
    Reference(SECOND_REFERENCE_ID, datetime(2026, 11, 27, 9, 30, 15, tzinfo=UTC), 123),
]
OWN_NUMBER = 124


def make_event(
    message_type: str = "alert",
    *,
    body: str | None = BODY,
    sent_at: datetime = SENT_AT,
    finishes_at: datetime | None = FINISHES_AT,
    polygons: list | None = None,
) -> BroadcastEvent:
    return BroadcastEvent(
        id=EVENT_ID,
        message_type=message_type,
        sent_at=sent_at,
        transmitted_content=None if body is None else {"body": body},
        transmitted_areas={"names": ["Thames"], "simple_polygons": polygons or [POLYGON]},
        transmitted_finishes_at=finishes_at,
    )


def payload_for(provider: str, message_type: str, **event_options) -> dict:
    references = REFERENCES if message_type in ("update", "cancel") else []
    return build_payload(
        get_provider(provider),
        make_event(message_type, **event_options),
        identifier=IDENTIFIER,
        message_number=OWN_NUMBER,
        references=references,
        channel="severe",
        headline=HEADLINE,
    )


def link_test_for(provider: str) -> dict:
    return build_link_test_payload(get_provider(provider), IDENTIFIER, OWN_NUMBER)


# --- golden payloads: CAP (ee, three, o2) ---------------------------------------------------


@pytest.mark.parametrize("provider", CAP_PROVIDERS)
def test_cap_alert_payload_is_exactly_the_golden_payload(provider):
    assert payload_for(provider, "alert") == {
        "message_type": "alert",
        "identifier": "a0000000-0000-4000-8000-00000000000a",
        "message_format": "cap",
        "headline": "GOV.UK Notify Broadcast",
        "description": "Flood warning for the River Thames. Move to higher ground now.",
        "areas": [{"polygon": [[51.5, -0.1], [51.6, -0.1], [51.6, 0.0]]}],
        "sent": "2026-11-27T10:00:00-00:00",
        "expires": "2026-11-27T13:00:00-00:00",
        "language": "en-GB",
        "channel": "severe",
    }


@pytest.mark.parametrize("provider", CAP_PROVIDERS)
def test_cap_update_payload_is_exactly_the_golden_payload(provider):
    assert payload_for(provider, "update") == {
        "message_type": "update",
        "identifier": "a0000000-0000-4000-8000-00000000000a",
        "message_format": "cap",
        "headline": "GOV.UK Notify Broadcast",
        "description": "Flood warning for the River Thames. Move to higher ground now.",
        "areas": [{"polygon": [[51.5, -0.1], [51.6, -0.1], [51.6, 0.0]]}],
        "sent": "2026-11-27T10:00:00-00:00",
        "expires": "2026-11-27T13:00:00-00:00",
        "language": "en-GB",
        "channel": "severe",
        "references": [
            {"message_id": "b0000000-0000-4000-8000-00000000000b", "sent": "2026-11-27T09:00:00-00:00"},
            {"message_id": "c0000000-0000-4000-8000-00000000000c", "sent": "2026-11-27T09:30:15-00:00"},
        ],
    }


@pytest.mark.parametrize("provider", CAP_PROVIDERS)
def test_cap_cancel_payload_is_exactly_the_golden_payload(provider):
    assert payload_for(provider, "cancel") == {
        "message_type": "cancel",
        "identifier": "a0000000-0000-4000-8000-00000000000a",
        "message_format": "cap",
        "references": [
            {"message_id": "b0000000-0000-4000-8000-00000000000b", "sent": "2026-11-27T09:00:00-00:00"},
            {"message_id": "c0000000-0000-4000-8000-00000000000c", "sent": "2026-11-27T09:30:15-00:00"},
        ],
        "sent": "2026-11-27T10:00:00-00:00",
    }


@pytest.mark.parametrize("provider", CAP_PROVIDERS)
def test_cap_link_test_payload_is_exactly_the_golden_payload(provider):
    assert link_test_for(provider) == {
        "message_type": "test",
        "identifier": "a0000000-0000-4000-8000-00000000000a",
        "message_format": "cap",
    }


# --- golden payloads: IBAG (vodafone) -------------------------------------------------------


def test_vodafone_alert_payload_is_exactly_the_golden_payload():
    assert payload_for("vodafone", "alert") == {
        "message_type": "alert",
        "identifier": "a0000000-0000-4000-8000-00000000000a",
        "message_format": "ibag",
        "headline": "GOV.UK Notify Broadcast",
        "description": "Flood warning for the River Thames. Move to higher ground now.",
        "areas": [{"polygon": [[51.5, -0.1], [51.6, -0.1], [51.6, 0.0]]}],
        "sent": "2026-11-27T10:00:00-00:00",
        "expires": "2026-11-27T13:00:00-00:00",
        "language": "English",
        "channel": "severe",
        "message_number": "0000007c",
    }


def test_vodafone_update_payload_is_exactly_the_golden_payload():
    assert payload_for("vodafone", "update") == {
        "message_type": "update",
        "identifier": "a0000000-0000-4000-8000-00000000000a",
        "message_format": "ibag",
        "headline": "GOV.UK Notify Broadcast",
        "description": "Flood warning for the River Thames. Move to higher ground now.",
        "areas": [{"polygon": [[51.5, -0.1], [51.6, -0.1], [51.6, 0.0]]}],
        "sent": "2026-11-27T10:00:00-00:00",
        "expires": "2026-11-27T13:00:00-00:00",
        "language": "English",
        "channel": "severe",
        "references": [
            {
                "message_id": "b0000000-0000-4000-8000-00000000000b",
                "sent": "2026-11-27T09:00:00-00:00",
                "message_number": "0000004e",
            },
            {
                "message_id": "c0000000-0000-4000-8000-00000000000c",
                "sent": "2026-11-27T09:30:15-00:00",
                "message_number": "0000007b",
            },
        ],
        "message_number": "0000007c",
    }


def test_vodafone_cancel_payload_is_exactly_the_golden_payload():
    assert payload_for("vodafone", "cancel") == {
        "message_type": "cancel",
        "identifier": "a0000000-0000-4000-8000-00000000000a",
        "message_format": "ibag",
        "references": [
            {
                "message_id": "b0000000-0000-4000-8000-00000000000b",
                "sent": "2026-11-27T09:00:00-00:00",
                "message_number": "0000004e",
            },
            {
                "message_id": "c0000000-0000-4000-8000-00000000000c",
                "sent": "2026-11-27T09:30:15-00:00",
                "message_number": "0000007b",
            },
        ],
        "sent": "2026-11-27T10:00:00-00:00",
        "message_number": "0000007c",
    }


def test_vodafone_link_test_payload_is_exactly_the_golden_payload():
    assert link_test_for("vodafone") == {
        "message_type": "test",
        "identifier": "a0000000-0000-4000-8000-00000000000a",
        "message_format": "ibag",
        "message_number": "0000007c",
    }


# --- key sets -------------------------------------------------------------------------------

ALERT_KEYS = {
    "message_type", "identifier", "message_format", "headline", "description",
    "areas", "sent", "expires", "language", "channel",
}
KEYS = {
    "alert": ALERT_KEYS,
    "update": ALERT_KEYS | {"references"},
    "cancel": {"message_type", "identifier", "message_format", "references", "sent"},
    "test": {"message_type", "identifier", "message_format"},
}


def any_payload(provider: str, message_type: str) -> dict:
    return link_test_for(provider) if message_type == "test" else payload_for(provider, message_type)


@pytest.mark.parametrize("message_type", list(KEYS))
@pytest.mark.parametrize("provider", CAP_PROVIDERS)
def test_cap_payload_has_exactly_the_spec_keys_and_never_a_message_number(provider, message_type):
    payload = any_payload(provider, message_type)  # a number is offered; CAP must ignore it
    assert set(payload) == KEYS[message_type]
    assert "message_number" not in payload
    for reference in payload.get("references", []):
        assert set(reference) == {"message_id", "sent"}


@pytest.mark.parametrize("message_type", list(KEYS))
def test_vodafone_payload_always_has_a_message_number_besides_the_spec_keys(message_type):
    payload = any_payload("vodafone", message_type)
    assert set(payload) == KEYS[message_type] | {"message_number"}
    for reference in payload.get("references", []):
        assert set(reference) == {"message_id", "sent", "message_number"}


# --- values ---------------------------------------------------------------------------------


def test_vodafone_reference_numbers_78_and_123_render_as_eight_hex_digits():
    references = payload_for("vodafone", "update")["references"]
    assert [r["message_number"] for r in references] == ["0000004e", "0000007b"]


def test_update_references_keep_the_oldest_first_order_given():
    references = payload_for("ee", "update")["references"]
    assert [r["message_id"] for r in references] == [str(FIRST_REFERENCE_ID), str(SECOND_REFERENCE_ID)]
    assert references[0]["sent"] < references[1]["sent"]


def test_an_alert_carries_no_references_even_if_some_are_given():
    payload = build_payload(
        get_provider("vodafone"), make_event("alert"), identifier=IDENTIFIER,
        message_number=1, references=REFERENCES, channel="test", headline=HEADLINE,
    )
    assert "references" not in payload


def test_every_polygon_becomes_one_area_passed_through_unchanged():
    payload = payload_for("o2", "alert", polygons=[POLYGON, SECOND_POLYGON])
    assert payload["areas"] == [{"polygon": POLYGON}, {"polygon": SECOND_POLYGON}]


def test_headline_and_channel_come_from_the_arguments():
    payload = build_payload(
        get_provider("three"), make_event(), identifier=IDENTIFIER, message_number=None,
        references=[], channel="government", headline="Emergency Alert",
    )
    assert (payload["headline"], payload["channel"]) == ("Emergency Alert", "government")


@pytest.mark.parametrize(
    "number, expected",
    [(0, "00000000"), (1, "00000001"), (78, "0000004e"), (123, "0000007b"),
     (2**32 - 1, "ffffffff"), (2**32, "100000000")],
)
def test_message_number_hex_is_lower_case_zero_padded_to_8_and_never_truncated(number, expected):
    assert message_number_hex(number) == expected


# --- times ----------------------------------------------------------------------------------


def test_sent_and_expires_drop_microseconds_without_rounding_up():
    payload = payload_for(
        "ee", "alert",
        sent_at=datetime(2026, 11, 27, 10, 0, 59, 999999, tzinfo=UTC),
        finishes_at=datetime(2026, 11, 27, 23, 59, 59, 999999, tzinfo=UTC),
    )
    assert payload["sent"] == "2026-11-27T10:00:59-00:00"
    assert payload["expires"] == "2026-11-27T23:59:59-00:00"


def test_times_with_a_fixed_offset_are_converted_to_utc():
    minus_five = timezone(timedelta(hours=-5))
    payload = payload_for(
        "vodafone", "alert",
        sent_at=datetime(2026, 11, 27, 5, 0, 0, 250000, tzinfo=minus_five),
        finishes_at=datetime(2026, 11, 27, 21, 30, 0, tzinfo=minus_five),
    )
    assert payload["sent"] == "2026-11-27T10:00:00-00:00"
    assert payload["expires"] == "2026-11-28T02:30:00-00:00"  # crosses midnight in UTC


def test_british_summer_time_is_converted_to_utc():
    london = ZoneInfo("Europe/London")
    assert cap_time(datetime(2026, 7, 1, 11, 30, 0, 1, tzinfo=london)) == "2026-07-01T10:30:00-00:00"


def test_reference_sent_times_are_converted_to_utc_too():
    reference = Reference(FIRST_REFERENCE_ID, datetime(2026, 7, 1, 0, 15, tzinfo=ZoneInfo("Europe/London")), 5)
    payload = build_payload(
        get_provider("ee"), make_event("cancel"), identifier=IDENTIFIER, message_number=None,
        references=[reference], channel="test", headline=HEADLINE,
    )
    assert payload["references"] == [
        {"message_id": "b0000000-0000-4000-8000-00000000000b", "sent": "2026-06-30T23:15:00-00:00"}
    ]


# --- language -------------------------------------------------------------------------------


@pytest.mark.parametrize("provider, expected", [("ee", "cy-GB"), ("three", "cy-GB"), ("o2", "cy-GB"), ("vodafone", "Welsh")])
def test_welsh_description_sets_the_welsh_language_value(provider, expected):
    assert payload_for(provider, "alert", body=WELSH_BODY)["language"] == expected
    assert payload_for(provider, "update", body=WELSH_BODY)["language"] == expected


@pytest.mark.parametrize("provider, expected", [("ee", "en-GB"), ("three", "en-GB"), ("o2", "en-GB"), ("vodafone", "English")])
def test_english_description_sets_the_english_language_value(provider, expected):
    assert payload_for(provider, "alert", body=BODY)["language"] == expected


@pytest.mark.parametrize("provider, expected", [("ee", "en-GB"), ("vodafone", "English")])
def test_an_emoji_only_message_stays_english(provider, expected):
    payload = payload_for(provider, "alert", body="\N{POLICE CARS REVOLVING LIGHT}\N{WATER WAVE}")
    assert payload["language"] == expected


def test_gsm_accented_letters_do_not_make_a_message_welsh():
    assert payload_for("ee", "alert", body="Alerte à la crue: évacuez, Köln")["language"] == "en-GB"


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("message_type", ["alert", "update", "cancel"])
def test_a_numbered_provider_without_a_message_number_raises_payload_error(message_type):
    with pytest.raises(PayloadError, match="vodafone needs a message number"):
        build_payload(
            get_provider("vodafone"), make_event(message_type), identifier=IDENTIFIER,
            message_number=None, references=REFERENCES, channel="test", headline=HEADLINE,
        )


def test_a_vodafone_link_test_without_a_message_number_raises_payload_error():
    with pytest.raises(PayloadError):
        build_link_test_payload(get_provider("vodafone"), IDENTIFIER, None)


def test_a_vodafone_reference_without_a_message_number_raises_payload_error():
    reference = Reference(FIRST_REFERENCE_ID, SENT_AT - timedelta(hours=1), None)
    with pytest.raises(PayloadError):
        build_payload(
            get_provider("vodafone"), make_event("update"), identifier=IDENTIFIER,
            message_number=9, references=[reference], channel="test", headline=HEADLINE,
        )


def test_a_cap_provider_needs_no_message_number():
    payload = build_payload(
        get_provider("ee"), make_event("update"), identifier=IDENTIFIER, message_number=None,
        references=[Reference(FIRST_REFERENCE_ID, SENT_AT, None)], channel="test", headline=HEADLINE,
    )
    assert "message_number" not in payload


@pytest.mark.parametrize(
    "options",
    [{"body": None}, {"body": ""}, {"finishes_at": None}],
    ids=["no-content", "empty-body", "no-finishes-at"],
)
@pytest.mark.parametrize("message_type", ["alert", "update"])
def test_an_alert_or_update_without_body_or_finishes_at_raises_payload_error(message_type, options):
    with pytest.raises(PayloadError, match=str(EVENT_ID)):
        payload_for("ee", message_type, **options)


def test_a_cancel_needs_neither_body_nor_finishes_at():
    payload = payload_for("three", "cancel", body=None, finishes_at=None)
    assert payload["message_type"] == "cancel"


# --- the provider table ---------------------------------------------------------------------


def test_provider_table_matches_the_spec():
    rows = {
        name: (p.lambdas, p.message_format, p.english, p.welsh, p.numbered)
        for name, p in PROVIDERS.items()
    }
    assert rows == {
        "ee": (("ee-1-proxy", "ee-2-proxy"), "cap", "en-GB", "cy-GB", False),
        "three": (("three-1-proxy", "three-2-proxy"), "cap", "en-GB", "cy-GB", False),
        "o2": (("o2-1-proxy", "o2-2-proxy"), "cap", "en-GB", "cy-GB", False),
        "vodafone": (("vodafone-1-proxy", "vodafone-2-proxy"), "ibag", "English", "Welsh", True),
    }
    assert list(PROVIDERS) == ["ee", "three", "o2", "vodafone"]


def test_get_provider_rejects_an_unknown_name_listing_the_known_ones():
    with pytest.raises(UnknownProvider, match="'orange'.*ee, three, o2, vodafone"):
        get_provider("orange")

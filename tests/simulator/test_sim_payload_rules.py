"""The simulator's own reading of the payload contract (docs/behaviour.md §3)."""

import pytest

from simulator.functions import FUNCTIONS
from simulator.payload_rules import payload_problems

EE = FUNCTIONS["ee-1-proxy"]
VODAFONE = FUNCTIONS["vodafone-1-proxy"]
CANARY = FUNCTIONS["canary"]
TRIANGLE = [[51.5, -0.1], [51.6, -0.1], [51.6, 0.0]]
REFERENCE_ID = "0a3e5d2c-8b1f-4e6a-9c7d-1f2e3d4c5b6a"
EARLIER = "2026-11-27T09:00:00-00:00"


def _only_problem_mentions(problems, key):
    assert problems, "expected the payload to be rejected"
    assert all(p.startswith(key) for p in problems), problems


@pytest.mark.parametrize("message_type", ["alert", "update", "cancel", "test"])
@pytest.mark.parametrize("function", [EE, VODAFONE], ids=["cap", "ibag"])
def test_valid_payload_of_every_type_is_accepted(make_payload, message_type, function):
    payload = make_payload(message_type, function.message_format.name)
    assert payload_problems(function, payload) == []


def test_canary_accepts_any_json_value():
    assert payload_problems(CANARY, {"anything": [1, 2]}) == []
    assert payload_problems(CANARY, "just a string") == []


def test_payload_that_is_not_an_object_is_rejected():
    assert payload_problems(EE, ["alert"]) == ["payload: expected a JSON object, got list"]


def test_unknown_message_type_is_rejected_naming_message_type(make_payload):
    problems = payload_problems(EE, make_payload(message_type="broadcast"))
    _only_problem_mentions(problems, "message_type")


@pytest.mark.parametrize("message_type", ["alert", "update", "cancel", "test"])
def test_every_required_key_is_reported_when_missing(make_payload, message_type):
    for key in make_payload(message_type, "ibag"):
        if key == "message_type":
            continue
        payload = make_payload(message_type, "ibag")
        del payload[key]
        problems = payload_problems(VODAFONE, payload)
        assert f"{key}: missing from {message_type} payload" in problems


@pytest.mark.parametrize("message_type", ["alert", "update", "cancel", "test"])
def test_extra_key_is_rejected(make_payload, message_type):
    problems = payload_problems(EE, make_payload(message_type, colour="red"))
    assert problems == [f"colour: not allowed in a {message_type} payload"]


def test_cancel_must_not_carry_alert_content(make_payload):
    problems = payload_problems(EE, make_payload("cancel", headline="GOV.UK Notify Broadcast"))
    assert problems == ["headline: not allowed in a cancel payload"]


def test_message_number_is_rejected_for_cap_functions(make_payload):
    problems = payload_problems(EE, make_payload("alert", "cap", message_number="0000007b"))
    assert problems == ["message_number: must be absent for ee-1-proxy (cap format)"]


def test_message_number_is_required_for_vodafone(make_payload):
    payload = make_payload("test", "ibag")
    del payload["message_number"]
    assert payload_problems(VODAFONE, payload) == ["message_number: missing from test payload"]


@pytest.mark.parametrize(
    "function, wrong_format", [(EE, "ibag"), (VODAFONE, "cap")], ids=["cap", "ibag"]
)
def test_message_format_must_match_the_function(make_payload, function, wrong_format):
    right_format = function.message_format.name
    payload = make_payload("test", right_format, message_format=wrong_format)
    _only_problem_mentions(payload_problems(function, payload), "message_format")


@pytest.mark.parametrize("identifier", ["not-a-uuid", 123, "6f1c2b9e3a414c559d0e2b7a8c1d4e5f", ""])
def test_identifier_must_be_a_uuid_string(make_payload, identifier):
    _only_problem_mentions(payload_problems(EE, make_payload(identifier=identifier)), "identifier")


@pytest.mark.parametrize("number", ["0000007b", "7b000000", "1000000000"])
def test_message_number_of_eight_or_more_hex_digits_is_accepted(make_payload, number):
    assert payload_problems(VODAFONE, make_payload("alert", "ibag", message_number=number)) == []


@pytest.mark.parametrize("number", ["7b", "0000007B", "0000007g", 123, "000000007b"])
def test_message_number_must_be_lower_case_hex_zero_padded_to_eight(make_payload, number):
    payload = make_payload("alert", "ibag", message_number=number)
    _only_problem_mentions(payload_problems(VODAFONE, payload), "message_number")


@pytest.mark.parametrize("key", ["sent", "expires"])
@pytest.mark.parametrize(
    "value",
    [
        "2026-11-27T10:00:00Z",
        "2026-11-27T10:00:00+00:00",
        "2026-11-27T10:00:00.123-00:00",
        "2026-11-27 10:00:00-00:00",
        "2026-13-27T10:00:00-00:00",
        1764237600,
    ],
)
def test_times_must_be_in_cap_form_with_minus_zero_offset(make_payload, key, value):
    _only_problem_mentions(payload_problems(EE, make_payload(**{key: value})), key)


@pytest.mark.parametrize(
    "function, language", [(EE, "English"), (EE, "cy"), (VODAFONE, "en-GB"), (VODAFONE, "Cymraeg")]
)
def test_language_must_be_the_formats_value(make_payload, function, language):
    payload = make_payload("alert", function.message_format.name, language=language)
    _only_problem_mentions(payload_problems(function, payload), "language")


@pytest.mark.parametrize("language", ["en-GB", "cy-GB"])
def test_cap_accepts_english_and_welsh(make_payload, language):
    assert payload_problems(EE, make_payload(language=language)) == []


@pytest.mark.parametrize("language", ["English", "Welsh"])
def test_ibag_accepts_english_and_welsh(make_payload, language):
    assert payload_problems(VODAFONE, make_payload("alert", "ibag", language=language)) == []


@pytest.mark.parametrize("channel", ["test", "operator", "severe", "government"])
def test_every_channel_is_accepted(make_payload, channel):
    assert payload_problems(EE, make_payload(channel=channel)) == []


@pytest.mark.parametrize("message_type, fmt", [("alert", "cap"), ("cancel", "ibag"), ("test", "cap")])
@pytest.mark.parametrize("target", ["cbc_a", "cbc_b"])
def test_a_cbc_target_is_accepted_on_every_payload(make_payload, message_type, fmt, target):
    function = VODAFONE if fmt == "ibag" else EE
    assert payload_problems(function, {**make_payload(message_type, fmt), "cbc_target": target}) == []


@pytest.mark.parametrize("target", ["cbc_c", "", None, 1])
def test_an_unknown_cbc_target_is_rejected(make_payload, target):
    _only_problem_mentions(payload_problems(EE, {**make_payload(), "cbc_target": target}), "cbc_target")


def test_unknown_channel_is_rejected(make_payload):
    _only_problem_mentions(payload_problems(EE, make_payload(channel="public")), "channel")


@pytest.mark.parametrize("key", ["headline", "description"])
@pytest.mark.parametrize("value", ["", "   ", None, 42])
def test_headline_and_description_must_be_non_empty_strings(make_payload, key, value):
    _only_problem_mentions(payload_problems(EE, make_payload(**{key: value})), key)


@pytest.mark.parametrize(
    "areas",
    [
        [],
        "51.5,-0.1",
        [[[51.5, -0.1], [51.6, -0.1], [51.6, 0.0]]],
        [{"polygon": [[51.5, -0.1], [51.6, -0.1]]}],
        [{"polygon": [[51.5, -0.1], [51.6, -0.1], [51.6, True]]}],
        [{"polygon": [[51.5, -0.1], [51.6, -0.1], ["51.6", 0.0]]}],
        [{"polygon": [[51.5, -0.1], [51.6, -0.1], [51.6]]}],
        [{"polygon": [[91.0, -0.1], [51.6, -0.1], [51.6, 0.0]]}],
        [{"polygon": [[51.5, -0.1], [51.6, -0.1], [51.6, 0.0]], "name": "x"}],
    ],
    ids=[
        "empty",
        "string",
        "bare-polygon",
        "two-points",
        "bool",
        "string-number",
        "one-coordinate",
        "latitude-out-of-range",
        "extra-key",
    ],
)
def test_areas_must_be_polygons_of_at_least_three_numeric_points(make_payload, areas):
    _only_problem_mentions(payload_problems(EE, make_payload(areas=areas)), "areas")


def test_area_problem_names_the_polygon_and_point(make_payload):
    areas = [{"polygon": TRIANGLE}, {"polygon": [[51.5, -0.1], [51.6, -0.1], [51.6, "x"]]}]
    problems = payload_problems(EE, make_payload(areas=areas))
    assert problems == ["areas[1].polygon[2]: expected [lat, lon] numbers, got [51.6, 'x']"]


@pytest.mark.parametrize("message_type", ["update", "cancel"])
def test_update_and_cancel_need_at_least_one_reference(make_payload, message_type):
    payload = make_payload(message_type, references=[])
    _only_problem_mentions(payload_problems(EE, payload), "references")


@pytest.mark.parametrize(
    "reference, key",
    [
        ({"message_id": "nope", "sent": EARLIER}, "references[0].message_id"),
        ({"message_id": REFERENCE_ID, "sent": "yesterday"}, "references[0].sent"),
        ({"sent": EARLIER}, "references[0].message_id"),
        (REFERENCE_ID, "references[0]"),
    ],
    ids=["bad-id", "bad-sent", "missing-id", "not-an-object"],
)
def test_cap_reference_must_have_message_id_and_cap_sent(make_payload, reference, key):
    problems = payload_problems(EE, make_payload("cancel", references=[reference]))
    _only_problem_mentions(problems, key)


def test_cap_reference_must_not_carry_a_message_number(make_payload):
    reference = {
        "message_id": REFERENCE_ID,
        "sent": EARLIER,
        "message_number": "0000004e",
    }
    problems = payload_problems(EE, make_payload("update", references=[reference]))
    assert problems == ["references[0].message_number: not allowed for cap"]


@pytest.mark.parametrize("number", [None, "4e"])
def test_ibag_reference_needs_an_eight_hex_message_number(make_payload, number):
    reference = {"message_id": REFERENCE_ID, "sent": EARLIER}
    if number is not None:
        reference["message_number"] = number
    payload = make_payload("cancel", "ibag", references=[reference])
    _only_problem_mentions(payload_problems(VODAFONE, payload), "references[0].message_number")


def test_link_test_has_exactly_type_identifier_and_format(make_payload):
    problems = payload_problems(EE, make_payload("test", sent=EARLIER))
    assert problems == ["sent: not allowed in a test payload"]

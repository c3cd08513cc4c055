"""docs/behaviour.md §6 (content and areas) and the input parsers of `broadcasts.validation`."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from broadcasts.errors import InvalidInput
from broadcasts.validation import (
    areas_problems,
    content_problems,
    encoded_length,
    is_welsh,
    parse_duration,
    parse_polygon,
    parse_uuid,
)

WELSH = "ÀÁÂÈÊËÌÍÎÏÒÓÔÙÚÛÝáâêëíîïóôúûýÿŴŵŶŷŸẀẁẂẃẄẅỲỳ"  # docs/behaviour.md §3, verbatim
EXTENSION = "^{}\\[~]|€"
EMOJI = "\N{POLICE CARS REVOLVING LIGHT}"  # outside the BMP: two UTF-16 code units
TRIANGLE = [[51.5, -0.1], [51.6, -0.1], [51.6, 0.0]]


def areas(*polygons: object) -> dict:
    return {"names": [], "simple_polygons": list(polygons)}


# --- content: GSM-7 -------------------------------------------------------------------------


def test_content_of_1395_gsm_characters_is_accepted():
    assert content_problems("a" * 1395) == []


def test_content_of_1396_gsm_characters_is_rejected():
    problems = content_problems("a" * 1396)
    assert len(problems) == 1
    assert "1396 GSM-7" in problems[0]
    assert "1395" in problems[0]


@pytest.mark.parametrize("char", list(EXTENSION))
def test_gsm_extension_character_counts_two(char):
    assert encoded_length(char) == 2
    assert encoded_length(char + "a") == 3


def test_697_euro_signs_and_one_letter_make_1395_and_are_accepted():
    assert content_problems("€" * 697 + "a") == []


def test_698_euro_signs_make_1396_and_are_rejected():
    problems = content_problems("€" * 698)
    assert len(problems) == 1
    assert "1396 GSM-7" in problems[0]


@pytest.mark.parametrize("char", list(EXTENSION))
def test_extension_characters_at_the_limit_are_accepted_and_one_septet_more_is_rejected(char):
    assert content_problems(char * 697 + "a") == []
    assert content_problems(char * 698) != []


def test_gsm_accented_letters_keep_content_in_gsm7_with_its_larger_limit():
    content = ("éàöÄÑü" * 233)[:1395]
    assert len(content) == 1395
    assert content_problems(content) == []


# --- content: UCS-2 -------------------------------------------------------------------------


def test_content_of_615_characters_with_a_non_gsm_character_is_accepted():
    assert content_problems("a" * 614 + "ŵ") == []


def test_content_of_616_characters_with_a_non_gsm_character_is_rejected():
    problems = content_problems("a" * 615 + "ŵ")
    assert len(problems) == 1
    assert "616 UCS-2" in problems[0]
    assert "615" in problems[0]
    assert "ŵ" in problems[0]  # names the character that forced UCS-2


def test_one_non_gsm_character_switches_the_limit_from_1395_to_615():
    assert content_problems("a" * 700) == []
    assert content_problems("a" * 699 + "ŵ") != []


def test_extension_characters_count_one_in_ucs2_content():
    assert encoded_length("ŵ" + "€" * 614) == 615
    assert content_problems("ŵ" + "€" * 614) == []


def test_an_emoji_counts_two_utf16_units():
    assert encoded_length(EMOJI) == 2
    assert encoded_length("a" + EMOJI) == 3


def test_613_ascii_characters_and_one_emoji_make_615_and_are_accepted():
    assert content_problems("a" * 613 + EMOJI) == []


def test_614_ascii_characters_and_one_emoji_make_616_and_are_rejected():
    problems = content_problems("a" * 614 + EMOJI)
    assert len(problems) == 1
    assert "616 UCS-2" in problems[0]


# --- content: empty -------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["", " ", "   ", "\n", "\r\n\t ", "\f"], ids=repr)
def test_empty_or_whitespace_only_content_is_rejected(content):
    assert content_problems(content) == ["content is empty"]


@pytest.mark.parametrize("content", [None, 42, ["body"]], ids=repr)
def test_content_that_is_not_a_string_is_rejected_as_empty(content):
    assert content_problems(content) == ["content is empty"]


def test_a_single_visible_character_is_valid_content():
    assert content_problems("x") == []


# --- Welsh ----------------------------------------------------------------------------------


@pytest.mark.parametrize("char", list(WELSH), ids=lambda c: f"U+{ord(c):04X}")
def test_each_welsh_letter_of_the_spec_makes_content_welsh(char):
    assert is_welsh(char)
    assert is_welsh(f"Rhybudd llifogydd {char} yma")


@pytest.mark.parametrize("char", ["é", "à", "ö", "è", "ù", "ì", "ò", "É", "Ä", "Ö", "ñ", "ü"])
def test_gsm_accented_letters_are_not_welsh(char):
    assert not is_welsh(f"Alerte {char} maintenant")


@pytest.mark.parametrize("content", [EMOJI, EMOJI * 3, "Flood " + EMOJI, "Ελλάδα", "水灾警报", "ŝ ĉ ğ"])
def test_emoji_and_other_scripts_are_not_welsh(content):
    assert not is_welsh(content)


def test_plain_english_is_not_welsh():
    assert not is_welsh("Severe flood warning. Move to higher ground now.")


# --- areas ----------------------------------------------------------------------------------


def test_a_triangle_is_a_valid_area():
    assert areas_problems(areas(TRIANGLE)) == []


@pytest.mark.parametrize(
    "value",
    [areas(), {"names": ["Somewhere"]}, {"simple_polygons": None}, None, [], "polygon"],
    ids=["empty-list", "no-key", "none-polygons", "none", "list", "string"],
)
def test_areas_without_a_polygon_are_rejected(value):
    assert areas_problems(value) == ["areas have no polygon"]


def test_a_polygon_with_fewer_than_3_distinct_points_is_rejected():
    problems = areas_problems(areas([[51.5, -0.1], [51.6, -0.1], [51.5, -0.1], [51.6, -0.1]]))
    assert problems == ["polygon 1 has fewer than 3 distinct points"]


def test_an_empty_polygon_is_rejected():
    assert areas_problems(areas([])) == ["polygon 1 has fewer than 3 distinct points"]


def test_a_closed_ring_that_repeats_its_first_point_has_3_distinct_points_and_is_accepted():
    assert areas_problems(areas(TRIANGLE + [TRIANGLE[0]])) == []


def test_a_problem_in_the_second_polygon_names_polygon_2():
    problems = areas_problems(areas(TRIANGLE, [[1, 1], [2, 2]]))
    assert problems == ["polygon 2 has fewer than 3 distinct points"]


@pytest.mark.parametrize(
    "point, fragment",
    [
        ([90.0001, 0.0], "latitude 90.0001"),
        ([-90.0001, 0.0], "latitude -90.0001"),
        ([0.0, 180.0001], "longitude 180.0001"),
        ([0.0, -180.0001], "longitude -180.0001"),
    ],
)
def test_a_coordinate_out_of_range_is_rejected(point, fragment):
    problems = areas_problems(areas([point, [1.0, 1.0], [2.0, 2.0]]))
    assert len(problems) == 1
    assert fragment in problems[0]
    assert problems[0].startswith("polygon 1 ")


def test_boundary_coordinates_minus_90_90_minus_180_180_are_accepted():
    polygon = [[-90, -180], [90, 180], [-90.0, 180.0], [90.0, -180.0]]
    assert areas_problems(areas(polygon)) == []


@pytest.mark.parametrize(
    "point",
    [
        ["51.5", -0.1],
        [51.5, "-0.1"],
        [True, 0.0],
        [51.5, False],
        [None, 0.0],
        [float("nan"), 0.0],
        [51.5, float("inf")],
        [51.5],
        [51.5, -0.1, 10.0],
        {"lat": 51.5, "lon": -0.1},
        "51.5,-0.1",
    ],
    ids=repr,
)
def test_a_point_that_is_not_two_numbers_is_rejected(point):
    problems = areas_problems(areas([point, [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]))
    assert len(problems) == 1
    assert "polygon 1 has a point that is not two numbers" in problems[0]


def test_a_polygon_that_is_not_a_list_is_rejected():
    assert areas_problems(areas("51.5,-0.1 51.6,-0.1 51.6,0.0")) == [
        "polygon 1 is not a list of [lat, lon] points"
    ]


def test_integer_coordinates_are_numbers():
    assert areas_problems(areas([[0, 0], [1, 0], [1, 1]])) == []


# --- parse_polygon --------------------------------------------------------------------------


def test_parse_polygon_reads_lat_lon_pairs_separated_by_spaces():
    assert parse_polygon("51.5,-0.1 51.6,-0.1  51.6,0.0") == TRIANGLE


@pytest.mark.parametrize(
    "text",
    [
        "51.5;0.1 51.6;0.1 51.6;0.2",
        "51.5,0.1,3 51.6,0.1 51.6,0.2",
        "a,b 51.6,0.1 51.6,0.2",
        "51.5,-0.1 51.6,-0.1",
        "51.5,-0.1 51.5,-0.1 51.5,-0.1",
        "90.0001,0 51.6,0.1 51.6,0.2",
        "0,-180.0001 51.6,0.1 51.6,0.2",
        "nan,0 51.6,0.1 51.6,0.2",
        "",
    ],
    ids=repr,
)
def test_parse_polygon_rejects_malformed_text_with_a_value_error(text):
    with pytest.raises(ValueError):
        parse_polygon(text)


def test_parse_polygon_names_the_malformed_pair():
    with pytest.raises(ValueError, match=r"'51\.5;0\.1' is not lat,lon"):
        parse_polygon("51.5;0.1 51.6;0.1 51.6;0.2")


def test_parse_polygon_accepts_the_coordinate_boundaries():
    assert parse_polygon("-90,-180 90,180 0,0") == [[-90.0, -180.0], [90.0, 180.0], [0.0, 0.0]]


# --- parse_duration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("2h", timedelta(hours=2)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d", timedelta(days=1)),
        (" 2H ", timedelta(hours=2)),
    ],
)
def test_parse_duration_reads_numbers_with_units(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["10", "abc", "-5m", "", "5 m", "1.5h", "m30", "30x"], ids=repr)
def test_parse_duration_rejects_text_that_is_not_a_duration(text):
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


# --- parse_uuid -----------------------------------------------------------------------------


def test_parse_uuid_returns_the_uuid():
    value = uuid.uuid4()
    assert parse_uuid(str(value)) == value


@pytest.mark.parametrize("value", ["not-a-uuid", "", "1234", "12345678-1234-5678-1234-56781234567g"])
def test_parse_uuid_rejects_a_non_uuid_with_invalid_input_naming_the_value(value):
    with pytest.raises(InvalidInput) as raised:
        parse_uuid(value, "broadcast event id")
    assert repr(value) in str(raised.value)
    assert "broadcast event id" in str(raised.value)
    assert "is not a UUID" in str(raised.value)


def test_invalid_input_is_a_value_error_so_callers_catching_value_error_see_it():
    with pytest.raises(ValueError):
        parse_uuid("nope")

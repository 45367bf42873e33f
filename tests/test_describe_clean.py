"""Cleaning LLM answers into short visual descriptions."""

from freecp.dedup import merge_descriptions
from freecp.describe.clean import clean_answer, parse_answer


def test_numbered_list_with_chatter_duplicates_and_a_cut_off_end():
    answer = (
        "Sure! Here are some descriptions of a cat:\n"
        "1. A small animal with pointed ears.\n"
        "2) **Long white whiskers**\n"
        "3. A small animal with pointed ears\n"
        "- \"Green eyes with slit pupils\"\n"
        "• It meows and purrs softly, a sound owners love\n"
        "I hope this helps! Let me know if you need more.\n"
        "8. A striped tail curled around its fe"
    )
    assert clean_answer(answer, ("cat",), truncated=True) == [
        "A small animal with pointed ears",
        "Long white whiskers",
        "Green eyes with slit pupils",
    ]


def test_cut_off_line_is_kept_when_the_answer_was_not_truncated():
    answer = "1. Orange striped fur\n2. A long curled tail"
    assert clean_answer(answer, ("cat",), truncated=False) == ["Orange striped fur", "A long curled tail"]
    assert clean_answer(answer, ("cat",), truncated=True) == ["Orange striped fur"]


def test_json_list_in_a_code_fence_and_in_an_object():
    fenced = '```json\n["striped orange fur", "a long tail", "x", "striped orange fur"]\n```'
    assert clean_answer(fenced, ("cat",)) == ["Striped orange fur", "A long tail"]
    wrapped = 'Here you go: {"features": ["four thin legs", "a wet black nose"]}'
    assert parse_answer(wrapped) == ["four thin legs", "a wet black nose"]


def test_refusals_and_headings_leave_nothing():
    answer = ("As an AI language model, I cannot see images.\nColours:\nI'm sorry, I am unable to help.\n"
              "Note that cats vary a lot.")
    assert clean_answer(answer, ("cat",)) == []


def test_prose_is_split_into_sentences():
    answer = ("A bus is a long vehicle with many windows along its side. It is often painted yellow or red. "
              "Passengers board through folding doors at the front of the vehicle.")
    assert clean_answer(answer, ("bus",)) == [
        "A bus is a long vehicle with many windows along its side",
        "It is often painted yellow or red",
        "Passengers board through folding doors at the front of the vehicle",
    ]


def test_inline_numbering_and_length_limits():
    assert clean_answer("1. Red body 2. Four wheels 3) Shiny windows", ("car",)) == [
        "Red body", "Four wheels", "Shiny windows"]
    too_long = "A " + "very " * 40 + "long description"
    assert clean_answer(f"1. Wet\n2. {too_long}\n3. The car\n4. Chrome bumper", ("car",)) == ["Chrome bumper"]


def test_code_and_non_visual_facts_are_dropped():
    answer = "json_data = {\"name\": \"Felix\"}\nIt costs about 20 dollars\nA round glass face with hands"
    assert clean_answer(answer, ("clock",)) == ["A round glass face with hands"]


def test_merge_keeps_order_and_drops_case_and_punctuation_repeats():
    assert merge_descriptions([["Red fur", "A long tail"], ["red fur.", "Big paws", "a long tail!"]]) == [
        "Red fur", "A long tail", "Big paws"]

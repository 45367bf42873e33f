"""Cleaning LLM answers into short visual descriptions."""

import json
import os
import subprocess
import sys
from pathlib import Path

from freecp.dedup import merge_descriptions
from freecp.describe.clean import MAX_ANSWER_CHARS, clean_answer, parse_answer

ROOT = Path(__file__).resolve().parent.parent


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


def _cleaned_in_a_process(answer: str, seconds: float = 120.0) -> list[str]:
    """``clean_answer`` in a child process: a hang guard, not a speed measurement (the old
    quadratic regex took minutes here, holding the GIL, so a thread could not time it out)."""
    script = "import json, sys; from freecp.describe.clean import clean_answer; " \
             "print(json.dumps(clean_answer(sys.stdin.read())))"
    proc = subprocess.run([sys.executable, "-c", script], input=answer, capture_output=True, text=True,
                          timeout=seconds, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_a_300_kb_whitespace_answer_is_cleaned_and_runaway_answers_are_capped():
    huge = "Pointed ears on top" + " " * 300_000 + "and long white whiskers"
    assert _cleaned_in_a_process(huge) == []  # cut at the cap: its one line counts as cut off
    spaced = "Pointed ears on top" + " " * (MAX_ANSWER_CHARS - 100) + "and long white whiskers"
    assert _cleaned_in_a_process(spaced) == ["Pointed ears on top and long white whiskers"]
    runaway = "- Soft striped fur\n" + "x" * (MAX_ANSWER_CHARS + 10) + "\n- Long white whiskers\n"
    assert clean_answer(runaway) == ["Soft striped fur"]  # nothing read past the cap


def test_placeholders_copied_from_the_prompt_are_not_descriptions():
    """What SmolLM2 answered under the JSON schema: the example of the features prompt, copied."""
    copied = '["First feature", "Second feature", "Third feature", "Fourth feature", "Fifth feature"]'
    assert clean_answer(copied, ("cat",)) == []
    numbered = "1. Feature 1\n2. Visual cue 2\n3. Example description\n4. Next item\n5. Pointed ears on top"
    assert clean_answer(numbered, ("cat",)) == ["Pointed ears on top"]
    # real descriptions that merely start with such words stay
    assert clean_answer('["First feathers of a chick", "Two striped feature walls"]', ("bird",)) == [
        "First feathers of a chick", "Two striped feature walls"]


def test_answers_that_only_restate_the_class_name_are_not_descriptions():
    answer = ('["A cat", "The cat.", "A photo of a cat", "This is a kitten", "An image of the tabby cat", '
              '"A cat sleeping on a sofa"]')
    assert clean_answer(answer, ("cat", "kitten", "tabby cat")) == ["A cat sleeping on a sofa"]
    assert clean_answer("1. Dining table\n2. A dining table\n3. A wooden dining table", ("dining table",)) == [
        "A wooden dining table"]


def test_a_long_json_item_is_split_like_a_line_and_an_echoed_question_dropped():
    """SmolLM2 under the JSON schema often puts a whole paragraph, or its own numbered list, in one item."""
    answer = json.dumps([
        "How can you identify a cat in a photo? 1. Ears: The ears are pointed and upright. "
        "2. Whiskers: Long white whiskers frame the muzzle.",
        "The cat has a small pink nose and green eyes. Its striped fur is soft and dense, with a darker band "
        "along the spine that runs all the way from the neck down to the long curled tail of the animal.",
    ])
    assert clean_answer(answer, ("cat",)) == [
        "Ears: The ears are pointed and upright",
        "Whiskers: Long white whiskers frame the muzzle",
        "The cat has a small pink nose and green eyes",
        "Its striped fur is soft and dense, with a darker band along the spine that runs all the way from the "
        "neck down to the long curled tail of the animal",
    ]

"""Answer post-processing rules: every worked example of eval.md section 3.2, plus the parsers of section 4."""

import pytest

from lmm.eval.scoring import (
    extract_mmbench_letter,
    extract_sqa_letter,
    gqa_postprocess,
    normalize_vqa_answer,
    parse_mme_yes_no,
    parse_pope_yes_no,
)

# eval.md 3.2 "Worked examples" table: raw -> normalised
WORKED_EXAMPLES = [
    ("Yes", "yes"),
    ("Two.", "2"),
    ("The red one", "red 1"),
    ("A dog", "dog"),
    ("dont know", "don't know"),
    ("1,000", "1000"),
    ("3.5 inches", "3.5 inches"),
    ("T-shirt", "t shirt"),
    ("left side (near the window)", "left side near window"),
    ("Man's hat", "man 's hat"),
    ("It is 10:30 a.m.", "it is 10:30 am"),
    ("1/2", "1 2"),
    ("e.g. cats", "eg cats"),
    ("none", "0"),
]


@pytest.mark.parametrize(("raw", "expected"), WORKED_EXAMPLES)
def test_vqa_normalisation_worked_examples(raw: str, expected: str) -> None:
    assert normalize_vqa_answer(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), [
    ("twas", "'twas"), ("maam", "ma'am"), ("oclock", "o'clock"), ("notve", "not've"),
    ("ow's'at", "ow 's'at"),  # step 1 splits "'s" first, so keys holding "'s" cannot match in this pipeline
    ("somebody'd", "somebodyd"),  # reversed entry kept for compatibility
    ("couldnt've", "couldn't've"), ("yall'd've", "y'all'd've"), ("im", "im"),  # capitalised keys never match
    ("zero ten eleven", "0 10 eleven"), ("an apple", "apple"),
])
def test_vqa_contractions_and_number_words(raw: str, expected: str) -> None:
    assert normalize_vqa_answer(raw) == expected


def test_vqa_punctuation_pass_details() -> None:
    # characters outside the 21-character list survive
    assert normalize_vqa_answer("50% & #1 * $2 it's: ok") == "50% & #1 * $2 it 's: ok"
    # the delete/space decision is per character: "(" has a space before it, ")" has none
    assert normalize_vqa_answer("x (y)z") == "x y z"
    assert normalize_vqa_answer("what?!") == "what"  # "?" removed in step 1, "!" -> space, then stripped
    assert normalize_vqa_answer("line\nbreak\ttab") == "line break tab"
    # at most 32 periods are stripped (re.UNICODE in the count slot)
    assert normalize_vqa_answer("." * 40) == "." * 8


def test_vqa_official_variant() -> None:
    # no step 1: case, "?" and "'s" untouched before step 5; the digit-comma-digit clause deletes all punctuation
    assert normalize_vqa_answer("1,000-2", official=True) == "10002"
    assert normalize_vqa_answer("1,000-2") == "1000 2"  # step 1 already removed the comma
    assert normalize_vqa_answer("Man's hat?", official=True) == "man's hat"
    assert normalize_vqa_answer("Two Dogs", official=True) == "2 dogs"
    assert normalize_vqa_answer("ow's'at", official=True) == "'ow's'at"


def test_gqa_postprocess() -> None:
    assert gqa_postprocess("Yes.") == "yes"
    assert gqa_postprocess("Left...") == "left"
    assert gqa_postprocess("St. Louis") == "st. louis"  # inner periods stay


@pytest.mark.parametrize(("text", "parsed"), [
    ("Yes", "yes"), ("No", "no"), ("no", "no"), ("NO", "yes"), ("", "yes"), ("Banana", "yes"),
    ("There is not a dog.", "no"), ("Yes. No.", "yes"), ("No, there is none", "no"), ("Yes, not sure", "no"),
    ("Nope", "yes"),
])
def test_pope_yes_no_parser(text: str, parsed: str) -> None:
    assert parse_pope_yes_no(text) == parsed


@pytest.mark.parametrize(("text", "parsed"), [
    ("Yes", "yes"), ("NO", "no"), ("Yes, it is.", "yes"), ("No.", "no"), ("Nope", "no"), ("I think yes", "other"),
    ("noyes", "no"),  # only the first 4 characters ("noye") are searched
    (" yes", "yes"), ("Not sure", "no"),
])
def test_mme_yes_no_parser(text: str, parsed: str) -> None:
    assert parse_mme_yes_no(text) == parsed


@pytest.mark.parametrize(("text", "letter"), [
    ("A", "A"), ("E", "E"), ("F", "FAILED"), ("B. dog", "B"), ("B.dog", "FAILED"), ("b. dog", "FAILED"),
    ("The answer is C.", "C"), ("The answer is F!", "F"), ("The answer is C", "FAILED"),
    ("The answer is A. The answer is B.", "FAILED"), ("", "FAILED"), ("AB", "FAILED"),
])
def test_sqa_letter_rules(text: str, letter: str) -> None:
    assert extract_sqa_letter(text) == letter


OPTIONS = {"A": "a red apple", "B": "a banana", "C": "grapes", "D": "a pear"}


@pytest.mark.parametrize(("text", "letter"), [
    ("B", "B"), ("B.", "B"), ("(C)", "C"), ("D)", "D"), ("Answer:A", "A"), ("A, because", "A"),
    ("The answer is B", "B"), ("A or B", None), ("grapes", "C"), ("I see grapes and a banana", None),
    ("A cat sits on the table", None),  # "A" as an article in a long answer
    ("A fruit: the answer is grapes", "C"),  # article-like "A" falls through to the option text
    ("E", None), ("", None),
])
def test_mmbench_rule_extraction(text: str, letter: str | None) -> None:
    assert extract_mmbench_letter(text, OPTIONS) == letter


def test_mmbench_extraction_without_options() -> None:
    assert extract_mmbench_letter("C") == "C"
    assert extract_mmbench_letter("E") is None  # default letters A-D
    assert extract_mmbench_letter("E", {"A": "x", "B": "y", "C": "z", "D": "w", "E": "v"}) == "E"

"""LLaVA-format records: JSON/JSONL loading and every validation error names file, record and reason; the JSON Lines
reader of every other line-by-line file names file and line."""

import json
from pathlib import Path

import pytest

from lmm.data.jsonl import JsonlError, read_jsonl
from lmm.data.records import (
    FIRST_TURN_DROPPED,
    Record,
    RecordError,
    Turn,
    load_records,
    record_problem,
    repair_record,
    resolve_image_path,
    validate_record,
)

GOOD = [
    {"id": "000000033471", "image": "coco/train2017/000000033471.jpg", "conversations": [
        {"from": "human", "value": "What are the colors of the bus?\n<image>"},
        {"from": "gpt", "value": "White and red."}]},
    {"id": 7, "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]},
]


def _conv(*pairs):
    return [Turn(r, v) for r, v in pairs]


def test_load_json_list_and_jsonl_by_content(tmp_path):
    as_list = tmp_path / "data.jsonl"  # a JSON list despite the extension
    as_list.write_text(json.dumps(GOOD, indent=2))
    as_lines = tmp_path / "data.json"  # JSONL despite the extension
    as_lines.write_text("\n".join(json.dumps(r) for r in GOOD) + "\n\n")
    for path in (as_list, as_lines):
        recs = load_records(path)
        assert [r.id for r in recs] == ["000000033471", "7"]
        assert recs[0].image == "coco/train2017/000000033471.jpg" and recs[1].image is None
        assert recs[0].conversations[1] == Turn("gpt", "White and red.")
        for i, rec in enumerate(recs):
            validate_record(rec, source=path, index=i)


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD[0]) + "\n" + '{"id": "x", "conversations": [}\n')
    with pytest.raises(RecordError, match=r"bad\.jsonl: line 2"):
        load_records(path)


def test_malformed_json_list_names_file_and_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n{"id": "a"},\n{"id": }\n]')
    with pytest.raises(RecordError, match=r"bad\.json: line 3"):
        load_records(path)


def test_wrong_types_rejected_at_load(tmp_path):
    path = tmp_path / "types.json"
    path.write_text(json.dumps([{"id": "a", "conversations": [{"from": "human"}]}]))
    with pytest.raises(RecordError, match=r"types\.json: record 0 \(id 'a'\): turn 0"):
        load_records(path)
    path.write_text(json.dumps([["not", "a", "dict"]]))
    with pytest.raises(RecordError, match="record 0: expected a JSON object"):
        load_records(path)


IMG_OK = _conv(("human", "<image>\nQ?"), ("gpt", "A."))

BAD = {
    "missing conversations": Record("r", "a.jpg", []),
    "first turn not human": Record("r", None, _conv(("gpt", "A."), ("human", "Q?"))),
    "not alternating": Record("r", None, _conv(("human", "Q?"), ("human", "Q2?"))),
    "unknown role": Record("r", None, _conv(("human", "Q?"), ("assistant", "A."))),
    "ends with human": Record("r", None, _conv(("human", "Q?"), ("gpt", "A."), ("human", "Q2?"))),
    "empty value": Record("r", None, _conv(("human", "Q?"), ("gpt", "  "))),
    "image without placeholder": Record("r", "a.jpg", _conv(("human", "Q?"), ("gpt", "A."))),
    "image with two placeholders": Record("r", "a.jpg", _conv(("human", "<image>\nQ?"), ("gpt", "A <image>"))),
    "text-only with placeholder": Record("r", None, IMG_OK),
    "absolute image path": Record("r", "/etc/passwd", IMG_OK),
    "image path escapes root": Record("r", "coco/../../secret.jpg", IMG_OK),
}
REASONS = {
    "missing conversations": "empty 'conversations'",
    "first turn not human": "first turn must be from 'human'",
    "not alternating": "alternate",
    "unknown role": "alternate",
    "ends with human": "end with 'gpt'",
    "empty value": "turn 1 has an empty value",
    "image without placeholder": "exactly one <image>.*found 0",
    "image with two placeholders": "exactly one <image>.*found 2",
    "text-only with placeholder": "text-only record contains 1 <image>",
    "absolute image path": "absolute",
    "image path escapes root": "escapes the image root",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_validation_errors_name_file_record_and_reason(case):
    with pytest.raises(RecordError, match=r"^train\.json: record 4 \(id 'r'\): .*" + REASONS[case]):
        validate_record(BAD[case], source="train.json", index=4, image_root="/data/images")


def test_resolve_image_path(tmp_path):
    assert resolve_image_path(tmp_path, "coco/x/../a.jpg") == Path(tmp_path) / "coco" / "a.jpg"
    for bad in ("/abs.jpg", "../up.jpg", "a/../../up.jpg", ""):
        with pytest.raises(RecordError):
            resolve_image_path(tmp_path, bad)


def test_pretty_printed_object_is_explained(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps(GOOD[0], indent=2))
    with pytest.raises(RecordError, match=r"one\.json: expected a JSON list or JSONL"):
        load_records(path)


def test_a_first_turn_not_from_human_is_dropped_as_llava_does():
    """Spec §2.3 (LLaVA's preprocess: source = source[1:]): the leading gpt turn goes, the rest is kept as is."""
    raw = Record("r", "a.jpg", _conv(("gpt", "Hello, ask me."), ("human", "<image>\nWhat colour?"), ("gpt", "Red."),
                                     ("human", "Sure?"), ("gpt", "Yes.")))
    rec, repairs = repair_record(raw)
    assert rec.conversations == _conv(("human", "<image>\nWhat colour?"), ("gpt", "Red."), ("human", "Sure?"),
                                      ("gpt", "Yes."))
    assert (rec.id, rec.image) == ("r", "a.jpg") and record_problem(rec, "/data/images") is None
    assert [r.kind for r in repairs] == [FIRST_TURN_DROPPED] and "turn 0 (from 'gpt')" in repairs[0].detail
    assert raw.conversations[0] == Turn("gpt", "Hello, ask me.") and len(raw.conversations) == 5  # input untouched
    for role in ("system", "assistant"):  # any role but human, as the spec says
        rec, repairs = repair_record(Record("r", None, _conv((role, "x"), ("human", "Q?"), ("gpt", "A."))))
        assert rec.conversations == _conv(("human", "Q?"), ("gpt", "A.")) and len(repairs) == 1


def test_a_human_first_record_is_not_repaired():
    rec = Record("r", "a.jpg", IMG_OK)
    assert repair_record(rec) == (rec, [])
    assert repair_record(Record("r", None, [])) == (Record("r", None, []), [])


def test_only_one_turn_is_dropped_and_what_is_left_is_validated():
    """LLaVA drops a single turn: a conversation still not starting with human, or left empty, stays unusable."""
    rec, repairs = repair_record(Record("r", None, _conv(("gpt", "A."), ("gpt", "B."), ("human", "Q?"), ("gpt", "C."))))
    assert rec.conversations == _conv(("gpt", "B."), ("human", "Q?"), ("gpt", "C.")) and len(repairs) == 1
    assert "first turn must be from 'human', got 'gpt'" in record_problem(rec)
    rec, repairs = repair_record(Record("r", None, _conv(("gpt", "A."))))
    assert rec.conversations == [] and "empty 'conversations'" in record_problem(rec)


def test_jsonl_reader_names_file_and_line_with_the_callers_error(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + '{"question_id": 1}\n\n  \n{"question_id": "\u00e9"}\n'.encode())
    assert list(read_jsonl(path)) == [(1, {"question_id": 1}), (4, {"question_id": "\u00e9"})]  # BOM, blanks skipped
    path.write_text('{"a": 1}\n{"a": }\n')
    with pytest.raises(JsonlError, match=rf"^{path}:2: invalid JSON \(Expecting value at column 7\)"):
        list(read_jsonl(path))

    class BenchmarkError(ValueError):
        pass

    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(BenchmarkError, match=rf"^{path}:2: expected a JSON object, got list"):
        list(read_jsonl(path, error=BenchmarkError))

"""Format prompts as an on-the-fly transform, and carving the 665K file into sources by rule (spec §9)."""

from __future__ import annotations

import json

import pytest

from lmm.data.formats import CAPTION, MULTIPLE_CHOICE, REGION_TO_BOX, SHORT_ANSWER, FormatPrompt, detect_policy
from lmm.data.records import Turn
from lmm.data.sources.carve import carve, classify, main


def _conv(*values):
    return [Turn("human" if k % 2 == 0 else "gpt", v) for k, v in enumerate(values)]


def test_short_answer_prompt_is_stripped_or_kept_on_every_human_turn():
    stored = _conv(f"<image>\nWhat colour?\n{SHORT_ANSWER}", "red", f"Where?\n{SHORT_ANSWER}", "left")
    raw = _conv("<image>\nWhat colour?", "red", "Where?", "left")
    on, off = FormatPrompt("short_answer", True), FormatPrompt("short_answer", False)
    assert on(stored) == on(raw) == stored  # idempotent: stored and raw data give the same text
    assert off(stored) == off(raw) == raw  # rung 2's ablation from the same files
    assert off(stored)[1] == Turn("gpt", "red")  # answers untouched


def test_policies_with_their_own_prompts():
    mc = _conv(f"<image>\nWhich?\nA. cat\nB. dog\n{MULTIPLE_CHOICE}", "B")
    assert FormatPrompt("multiple_choice", False)(mc)[0].value == "<image>\nWhich?\nA. cat\nB. dog"
    cap = _conv(f"<image>\n{CAPTION}", "A sign.")
    assert FormatPrompt("caption", False)(cap)[0].value == "<image>"
    assert FormatPrompt("caption", True)(FormatPrompt("caption", False)(cap)) == cap
    region = _conv(f"<image>\n{REGION_TO_BOX} the dog.", "[0.1, 0.2, 0.3, 0.4]")
    assert FormatPrompt("region", False)(region) == region  # the region prompt is the task itself
    with pytest.raises(ValueError, match="empty human turn"):
        FormatPrompt("short_answer", False)(_conv(SHORT_ANSWER, "yes"))
    with pytest.raises(ValueError, match="unknown response-format policy"):
        FormatPrompt("short")
    assert detect_policy(mc) == "multiple_choice" and detect_policy(region) == "region"


def _rec(i, image, question, answer="x"):
    rec = {"id": str(i), "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
    if image:
        rec["image"] = image
    return rec


MIX = [
    _rec(0, "coco/train2017/1.jpg", "<image>\nWhat is happening in this scene?"),
    _rec(1, None, "Write a poem."),
    _rec(2, "coco/train2017/2.jpg", f"<image>\nWhat colour?\n{SHORT_ANSWER}"),
    _rec(3, "coco/train2017/3.jpg", f"<image>\nWhy?\n{SHORT_ANSWER}"),
    _rec(4, "gqa/images/4.jpg", f"<image>\nIs it left?\n{SHORT_ANSWER}"),
    _rec(5, "ocr_vqa/images/5.jpg", f"<image>\nWho wrote this book?\n{SHORT_ANSWER}"),
    _rec(6, "coco/train2017/6.jpg", f"<image>\nWhich?\nA. a\nB. b\n{MULTIPLE_CHOICE}"),
    _rec(7, "textvqa/train_images/7.jpg", f"<image>\n{CAPTION}"),
    _rec(8, "coco/train2017/8.jpg", f"<image>\n{REGION_TO_BOX} a man."),
    _rec(9, "vg/VG_100K/9.jpg", f"<image>\n{REGION_TO_BOX} a tree."),
    _rec(10, "images/10.png", "<image>\nDescribe."),  # an unknown folder: classified like COCO, and reported
]
EXPECTED = ["llava_instruct", "sharegpt", "vqav2", "vqav2", "gqa", "ocrvqa", "aokvqa", "textcaps", "refcoco", "vg",
            "llava_instruct"]


def test_classify_by_folder_and_prompt():
    assert [classify(r) for r in MIX] == EXPECTED
    assert classify(MIX[3], okvqa_ids={"3"}) == "okvqa"


def test_carve_writes_sources_and_reports_counts(tmp_path, capsys):
    path = tmp_path / "mix.json"
    path.write_text(json.dumps(MIX))
    report = carve(path, tmp_path / "out", progress=False)
    assert report["total"] == 11 and report["counts"]["vqav2"] == 2 and report["counts"]["llava_instruct"] == 2
    assert report["unknown_prefix"] == {"images/": 1} and "okvqa" in report["note"]
    assert [json.loads(x)["id"] for x in (tmp_path / "out" / "vqav2.jsonl").read_text().splitlines()] == ["2", "3"]
    ids = tmp_path / "ok.txt"
    ids.write_text("3\n")
    main([str(path), str(tmp_path / "out2"), "--okvqa-ids", str(ids), "--no-progress"])
    printed = capsys.readouterr().out
    assert "okvqa" in printed and "11 records" in printed and "unknown image folder 'images/'" in printed
    assert (tmp_path / "out2" / "okvqa.jsonl").read_text().count("\n") == 1


def test_carve_counts_and_logs_entries_that_are_not_records(tmp_path, capsys):
    path = tmp_path / "mix.json"
    path.write_text(json.dumps([MIX[0], ["not", "a", "record"], MIX[1], "text", 7]))
    main([str(path), str(tmp_path / "out"), "--no-progress"])
    printed = capsys.readouterr().out
    assert "5 records" in printed and "rejected: 1 records (expected a JSON object, got list)" in printed
    assert "rejected: 1 records (expected a JSON object, got str)" in printed and "got int" in printed
    report = json.loads((tmp_path / "out" / "carve_report.json").read_text())
    assert report["total"] == 5 and sum(report["counts"].values()) == 2 and sum(report["rejected"].values()) == 3
    lines = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [(e["record"], e["value"]) for e in lines] == [(1, ["not", "a", "record"]), (3, "text"), (4, 7)]
    assert all("expected a JSON object" in e["reason"] and e["file"] == str(path) for e in lines)
    assert not (tmp_path / "out" / "invalid.jsonl").exists()  # no pseudo-source


def test_a_source_with_okvqa_ids_carves_okvqa_apart_and_one_without_is_left_out(tmp_path, capfd):
    """SourceSpec.okvqa_ids reaches the carve (vqav2 loses the listed records to okvqa); without ids the okvqa
    source is left out with a warning, never carved empty or silently."""
    from lmm.data.sources.spec import SourceSpec, carved_records

    path = tmp_path / "mix.json"
    path.write_text(json.dumps(MIX))
    ids = tmp_path / "ok.txt"
    ids.write_text("3\n")
    assert not SourceSpec(records=str(path), carve="okvqa").enabled
    assert "left out: without `okvqa_ids`" in capfd.readouterr().out
    okvqa = SourceSpec(records=str(path), carve="okvqa", okvqa_ids=str(ids))
    vqav2 = SourceSpec(records=str(path), carve="vqav2", okvqa_ids=str(ids))
    assert okvqa.enabled
    lines = {s.name: carved_records(s, tmp_path / "cache", progress=False).read_text().splitlines()
             for s in (okvqa, vqav2)}
    assert [json.loads(x)["id"] for x in lines["okvqa"]] == ["3"]
    assert [json.loads(x)["id"] for x in lines["vqav2"]] == ["2"]
    without = carved_records(SourceSpec(records=str(path), carve="vqav2"), tmp_path / "cache", progress=False)
    assert [json.loads(x)["id"] for x in without.read_text().splitlines()] == ["2", "3"]  # its own carve

"""RefCOCO grounding (lmm.eval.tasks.refcoco, lmm.eval.scoring.grounding): IoU and Acc@0.5 by hand, unparsable
answers, the padded-square box frame, the task's file checks and its configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from lmm.eval.files import BenchmarkFileError
from lmm.eval.runner import build_benchmarks
from lmm.eval.scoring.grounding import (
    GroundingAccuracy,
    box_iou,
    image_to_padded,
    padded_to_image,
    parse_box,
)
from lmm.eval.tasks.refcoco import RefCOCO
from tests.test_config import cfg_of


def test_iou_by_hand():
    assert box_iou((0.1, 0.2, 0.5, 0.6), (0.1, 0.2, 0.5, 0.6)) == pytest.approx(1.0)
    assert box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert box_iou((0, 0, 1, 1), (1, 0, 2, 1)) == 0.0  # touching edges share no area
    # 2x2 squares offset by 1 on both axes: intersection 1, union 4 + 4 - 1 = 7
    assert box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    # half-overlapping: intersection 0.25 x 0.5 = 0.125, union 0.125 + 0.125 + 0.125 = 0.375
    assert box_iou((0, 0, 0.5, 0.5), (0.25, 0, 0.75, 0.5)) == pytest.approx(1 / 3)
    assert box_iou((0.2, 0.2, 0.4, 0.4), (0, 0, 1, 1)) == pytest.approx(0.04)  # containment: area ratio
    assert box_iou((0.5, 0.5, 0.1, 0.1), (0.1, 0.1, 0.5, 0.5)) == 0.0  # corners out of order: no area


def test_parse_box_reads_the_first_four_numbers():
    assert parse_box("[0.12, 0.3, 0.56, 0.78]") == (0.12, 0.3, 0.56, 0.78)
    assert parse_box("The box is [.1,0.2, 1, 0.9] and 0.5 more") == (0.1, 0.2, 1.0, 0.9)
    assert parse_box("from (0.1, 0.2) to (0.3, 0.4)") == (0.1, 0.2, 0.3, 0.4)
    assert parse_box("x1=0.1 y1=0.2 x2=0.3 y2=0.4")[:2] == (1.0, 0.1)  # literally the first numbers: labels count
    assert parse_box("[0.1, 0.2, 0.3]") is None and parse_box("the red ball") is None and parse_box("") is None


def _acc(preds: list[str], boxes: list, **kwargs) -> dict[str, float]:
    sizes = kwargs.pop("sizes", None)
    metric = GroundingAccuracy(sync_on_compute=False, **kwargs)
    metric.update(preds, boxes, sizes)
    return metric.compute()


def test_acc_at_half_counts_iou_of_exactly_one_half():
    ref = (0.0, 0.0, 1.0, 1.0)
    half, below = "[0, 0, 0.5, 1]", "[0, 0, 0.49, 1]"  # IoU exactly 0.5 (0.5 / 1), and 0.49
    assert box_iou(parse_box(half), ref) == 0.5
    scores = _acc([half, below], [ref, ref])
    assert scores["acc"] == 0.5 and scores["miou"] == pytest.approx((0.5 + 0.49) / 2)
    assert _acc([below], [ref], threshold=0.4)["acc"] == 1.0


def test_unparsable_answers_count_as_wrong_and_are_counted():
    ref = (0.1, 0.1, 0.4, 0.4)
    scores = _acc(["[0.1, 0.1, 0.4, 0.4]", "the ball", "[0.1, 0.1, 0.4]", ""], [ref] * 4)
    assert scores == pytest.approx({"acc": 0.25, "miou": 0.25, "unparsable": 0.75, "n_unparsable": 3.0})


def test_padded_square_frame_by_hand():
    # a 200x100 image is pasted into a 200x200 square 50 px from the top: the square's [0.25, 0.25, 0.75, 0.75]
    # is x 50..150, y 50..150 px of the square = y 0..100 px of the image
    assert padded_to_image((0.25, 0.25, 0.75, 0.75), 200, 100) == pytest.approx((0.25, 0.0, 0.75, 1.0))
    # a 100x200 image sits 50 px from the left: the same square box is x 0..100 px of the image
    assert padded_to_image((0.25, 0.25, 0.75, 0.75), 100, 200) == pytest.approx((0.0, 0.25, 1.0, 0.75))
    assert padded_to_image((0.1, 0.2, 0.3, 0.4), 64, 64) == pytest.approx((0.1, 0.2, 0.3, 0.4))  # square: same
    box = (0.1, 0.2, 0.6, 0.9)
    assert padded_to_image(image_to_padded(box, 240, 160), 240, 160) == pytest.approx(box)
    # the same answer, read in either frame, against the whole of a 200x100 image
    answer, ref = "[0.00, 0.25, 1.00, 0.75]", (0.0, 0.0, 1.0, 1.0)
    assert _acc([answer], [ref])["miou"] == pytest.approx(0.5)
    assert _acc([answer], [ref], box_frame="padded_square", sizes=[(200, 100)])["miou"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="box_frame"):
        GroundingAccuracy(box_frame="square")


def _files(tmp: Path, rows: list[dict]) -> Path:
    Image.new("RGB", (200, 100), (255, 255, 255)).save(tmp / "a.png")
    path = tmp / "refcoco_val.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _row(qid: int, bbox: list, **extra) -> dict:
    return {"question_id": qid, "image": "a.png", "text": "Please provide the bounding box coordinate of the region "
            "this sentence describes: the ball.", "bbox": bbox, "width": 200, "height": 100, **extra}


def test_task_scores_frames_and_writes_predictions(tmp_path):
    path = _files(tmp_path, [_row(0, [0.25, 0.0, 0.75, 1.0]), _row(1, [0.0, 0.0, 0.5, 0.5])])
    answers = ["[0.25, 0.25, 0.75, 0.75]", "no idea"]
    image = RefCOCO(path, tmp_path)
    qs = image.questions()
    scored = image.score(qs, answers)
    # image frame: [0.25, 0.25, 0.75, 0.75] covers half of the reference
    assert scored.scores["acc"] == 0.5 and scored.per_question == [1.0, 0.0] and scored.scores["n_unparsable"] == 1
    assert image.headline(scored.scores) == 50.0 and image.reference_text(qs[0]) == "[0.25, 0.00, 0.75, 1.00]"
    padded = RefCOCO(path, tmp_path, box_frame="padded_square")
    scored = padded.score(padded.questions(), answers)
    assert scored.scores["miou"] == pytest.approx(0.5)  # read in the square, the answer is the reference exactly
    (written,) = padded.write_submission(tmp_path / "out", padded.questions(), answers)
    lines = [json.loads(line) for line in written.read_text().splitlines()]
    assert lines[0]["box"] == [0.25, 0.0, 0.75, 1.0] and lines[0]["iou"] == pytest.approx(1.0)
    assert lines[1]["box"] is None and lines[1]["iou"] is None
    assert padded.describe()["box_frame"] == "padded_square" and padded.describe()["headline_metric"] == "acc"
    with pytest.raises(ValueError, match="box_frame"):
        RefCOCO(path, tmp_path, box_frame="square")


@pytest.mark.parametrize(("bbox", "match"), [([0.1, 0.2, 0.3], "four numbers"), ([0.5, 0.2, 0.3, 0.4], "x1 < x2"),
                                             ([10, 20, 30, 40], "normalised"), ("0 0 1 1", "must be list")])
def test_malformed_references_name_file_and_line(tmp_path, bbox, match):
    path = _files(tmp_path, [_row(0, [0.1, 0.1, 0.2, 0.2]), _row(1, bbox)])
    with pytest.raises(BenchmarkFileError, match=rf"refcoco_val\.jsonl:2: .*{match}"):
        RefCOCO(path, tmp_path).questions()
    path = _files(tmp_path, [{k: v for k, v in _row(0, [0.1, 0.1, 0.2, 0.2]).items() if k != "width"}])
    with pytest.raises(BenchmarkFileError, match=r"refcoco_val\.jsonl:1: missing field 'width'"):
        RefCOCO(path, tmp_path).questions()


def test_configs_point_at_the_refcoco_layout(tmp_path):
    paper = cfg_of("eval=tiny", "+eval/benchmark@eval.benchmarks.refcoco=refcoco", "paths.data_root=/data")
    spec = paper.eval.benchmarks.refcoco
    assert spec._target_ == "lmm.eval.tasks.refcoco.RefCOCO"
    assert (spec.questions, spec.image_root) == ("/data/eval/refcoco/refcoco_val.jsonl", "/data/eval/refcoco/images")
    assert (spec.box_frame, spec.iou_threshold, spec.max_new_tokens) == ("image", 0.5, 128)
    for suite in ("tiny", "tiny_ladder"):
        tiny = cfg_of(f"eval={suite}", f"world.eval={tmp_path}").eval.benchmarks.tiny_refcoco
        assert Path(tiny.questions) == tmp_path / "refcoco" / "refcoco_val.jsonl"
        assert (tiny.box_frame, tiny.max_new_tokens) == ("image", 32)
    bench = build_benchmarks(cfg_of("eval=tiny_ladder", f"world.eval={tmp_path}").eval)[-1]
    assert isinstance(bench, RefCOCO) and bench.name == "tiny_refcoco" and bench.max_new_tokens == 32

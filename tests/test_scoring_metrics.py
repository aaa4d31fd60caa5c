"""Benchmark metrics on hand-made data: the worked examples of eval.md sections 3 and 4."""

import itertools

import pytest

from lmm.eval.scoring import (
    GQAAccuracy,
    MMBenchCircular,
    MMEMetric,
    POPEMetric,
    ScienceQAAccuracy,
    SEEDAccuracy,
    VQAAccuracy,
    normalize_vqa_answer,
    vqa_score,
)


def brute_force_vqa(pred: str, answers: list[str]) -> float:
    """The official loop: for each of the 10 answers, score against the other 9; average."""
    pred, answers = normalize_vqa_answer(pred), [normalize_vqa_answer(a) for a in answers]
    scores = []
    for drop in range(len(answers)):
        others = answers[:drop] + answers[drop + 1:]
        scores.append(min(1.0, sum(a == pred for a in others) / 3))
    return sum(scores) / len(scores)


@pytest.mark.parametrize(("k", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (7, 1.0), (10, 1.0)])
def test_vqa_score_by_number_of_agreeing_humans(k: int, expected: float) -> None:
    answers = ["cat"] * k + ["dog"] * (10 - k)
    assert vqa_score("cat", answers) == pytest.approx(expected)
    assert vqa_score("cat", answers) == pytest.approx(brute_force_vqa("cat", answers))


def test_vqa_score_worked_examples() -> None:
    # eval.md 3.1: "two" normalises to "2", so k = 4
    assert vqa_score("2", ["2"] * 3 + ["two"] + ["3"] * 6) == pytest.approx(1.0)
    assert vqa_score("2", ["2"] * 2 + ["3"] * 8) == pytest.approx(0.6)
    assert vqa_score("2", ["2"] * 1 + ["3"] * 9) == pytest.approx(0.3)
    assert vqa_score("Two.", ["2"] * 2 + ["3"] * 8) == pytest.approx(0.6)  # prediction normalised too


def test_vqa_score_matches_official_loop_on_mixed_answers() -> None:
    answers = ["red", "Red", "red.", "dark red", "the red one", "maroon", "red", "crimson", "red 1", "RED"]
    for pred in ["red", "Red one", "maroon", "blue", "dark red"]:
        assert vqa_score(pred, answers) == pytest.approx(brute_force_vqa(pred, answers))


def test_vqa_official_mode_compares_raw_strings_when_answers_agree() -> None:
    # eval.md 3.3: all 10 GT identical -> no normalisation, so "Yes" vs "yes" fails
    assert vqa_score("Yes", ["yes"] * 10, official=True) == 0.0
    assert vqa_score("Yes", ["yes"] * 10) == 1.0
    assert vqa_score("yes\n", ["yes"] * 10, official=True) == 1.0  # newline/tab replaced and stripped
    # answers disagree -> normalised
    assert vqa_score("Yes", ["yes"] * 9 + ["no"], official=True) == 1.0


EMPTY_COMPUTE = pytest.mark.filterwarnings("ignore:The ``compute`` method:UserWarning")


@EMPTY_COMPUTE
def test_vqa_accuracy_metric() -> None:
    metric = VQAAccuracy()
    metric.update(["2", "2"], [["2"] * 3 + ["two"] + ["3"] * 6, ["2"] * 2 + ["3"] * 8])
    metric.update(["cat"], [["dog"] * 10])
    assert metric.compute() == {"acc": pytest.approx((1.0 + 0.6 + 0.0) / 3)}
    assert VQAAccuracy().compute() == {"acc": 0.0}


def test_gqa_accuracy() -> None:
    metric = GQAAccuracy()
    metric.update(["Yes.", "Left", "table", "A table"], ["yes", "left", "tables", "table"])
    assert metric.compute() == {"acc": 0.5}


def test_pope_counts_and_rates() -> None:
    metric = POPEMetric()
    preds = ["Yes", "Yes", "No", "No", "Yes", "no.", "There is not", ""]
    labels = ["yes", "yes", "yes", "no", "no", "no", "yes", "no"]
    metric.update(preds, labels)
    tp, fp, tn, fn = 2, 2, 2, 2  # "" counts as yes
    out = metric.compute()
    assert out["acc"] == pytest.approx((tp + tn) / 8)
    assert out["precision"] == pytest.approx(tp / (tp + fp))
    assert out["recall"] == pytest.approx(tp / (tp + fn))
    assert out["f1"] == pytest.approx(0.5)
    assert out["yes_ratio"] == pytest.approx(4 / 8)


def test_pope_per_split_and_mean_f1() -> None:
    metric = POPEMetric(categories=["adversarial", "popular", "random"])
    metric.update(["Yes", "No"], ["yes", "no"], "random")
    metric.update(["Yes", "Yes"], ["yes", "no"], ["adversarial", "adversarial"])
    out = metric.compute()
    assert out["random/f1"] == 1.0 and out["random/acc"] == 1.0
    assert out["adversarial/precision"] == 0.5 and out["adversarial/yes_ratio"] == 1.0
    assert "popular/f1" not in out
    assert out["mean_f1"] == pytest.approx((1.0 + 2 / 3) / 2)
    with pytest.raises(ValueError):
        metric.update(["Yes"], ["yes"], "unknown")
    with pytest.raises(ValueError):
        POPEMetric().update(["Yes"], ["yes"], "random")


def _mme_batch(subtask: str, n_images: int, wrong_questions: set[int]) -> tuple[list, list, list, list]:
    preds, answers, cats, ids = [], [], [], []
    for image, gold in itertools.product(range(n_images), ["Yes", "No"]):
        q = len(preds)
        preds.append(("No" if gold == "Yes" else "Yes") if q in wrong_questions else gold)
        answers.append(gold)
        cats.append(subtask)
        ids.append(f"{subtask}/{image:04d}.png")
    return preds, answers, cats, ids


def test_mme_worked_example() -> None:
    # eval.md 4.7: existence 57/60 questions right and 27/30 images fully right -> 95.0 + 90.0 = 185.0
    metric = MMEMetric()
    metric.update(*_mme_batch("existence", 30, {0, 2, 4}))  # 3 wrong questions on 3 different images
    out = metric.compute()
    assert out["existence/acc"] == pytest.approx(0.95)
    assert out["existence/acc_plus"] == pytest.approx(0.9)
    assert out["existence/score"] == pytest.approx(185.0)
    assert out["perception_score"] == pytest.approx(185.0) and out["cognition_score"] == 0.0


@EMPTY_COMPUTE
def test_mme_perception_and_cognition_totals() -> None:
    metric = MMEMetric()
    metric.update(*_mme_batch("OCR", 20, {0, 1}))  # both questions of image 0 wrong: acc .95, acc+ .95
    metric.update(*_mme_batch("count", 30, set()))  # 200
    metric.update(*_mme_batch("code_reasoning", 20, {3}))  # acc 39/40, acc+ 19/20
    out = metric.compute()
    assert out["OCR/score"] == pytest.approx(190.0)
    assert out["perception_score"] == pytest.approx(390.0)
    assert out["cognition_score"] == pytest.approx(97.5 + 95.0)
    assert MMEMetric().compute() == {"perception_score": 0.0, "cognition_score": 0.0}
    with pytest.raises(ValueError):
        metric.update(["Yes"], ["Yes"], ["unknown"], ["x.png"])


def test_mme_parser_is_used() -> None:
    metric = MMEMetric()
    metric.update(["Yes, there is.", "I don't know"], ["Yes", "No"], ["color", "color"], ["a.jpg", "a.jpg"])
    assert metric.compute()["color/acc"] == 0.5 and metric.compute()["color/acc_plus"] == 0.0


def test_scienceqa_accuracy() -> None:
    metric = ScienceQAAccuracy()
    preds = ["A", "B. dog", "The answer is C.", "C", "E", "Maybe B", "D"]
    answers = [0, 1, 2, 1, 4, 1, 3]
    num_choices = [2, 3, 3, 4, 4, 2, 4]  # "E" with 4 choices is out of range -> wrong
    has_image = [True, True, False, False, True, False, True]
    metric.update(preds, answers, num_choices, has_image)
    assert metric.compute() == {"acc": pytest.approx(4 / 7), "acc_img": pytest.approx(3 / 4)}
    text_only = ScienceQAAccuracy()
    text_only.update(["A"], [0], [2])
    assert text_only.compute() == {"acc": 1.0}


def test_mmbench_circular_groups() -> None:
    metric = MMBenchCircular(categories=["ocr", "counting"], l2_categories=["perception", "reasoning"])
    options = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}
    # question 7: all 4 rotations right; question 8: one rotation wrong; question 9: one unresolved answer
    metric.update(["A", "B.", "(C)", "D"], ["A", "B", "C", "D"], [7, 1_000_007, 2_000_007, 3_000_007],
                  [options] * 4, ["ocr"] * 4, ["perception"] * 4)
    metric.update(["A", "B", "A"], ["A", "B", "C"], [8, 1_000_008, 2_000_008], [options] * 3, ["counting"] * 3,
                  ["perception"] * 3)
    metric.update(["B", "I am not sure"], ["B", "A"], [9, 1_000_009], [options] * 2, ["counting"] * 2,
                  ["reasoning"] * 2)
    metric.update(["the animal is a bird"], ["C"], [10], [options], ["counting"], ["reasoning"])  # option text
    out = metric.compute()
    assert out == {"acc": 0.5, "acc/ocr": 1.0, "acc/counting": pytest.approx(1 / 3),
                   "acc_l2/perception": 0.5, "acc_l2/reasoning": 0.5}
    with pytest.raises(ValueError):
        metric.update(["A"], ["A"], [11], [options], ["unknown"])
    with pytest.raises(ValueError):
        metric.update(["A"], ["A"], [11], [options], ["ocr"], ["unknown"])
    plain = MMBenchCircular()  # no breakdowns asked for
    plain.update(["A"], ["A"], [1])
    assert plain.compute() == {"acc": 1.0}


def test_seed_accuracy() -> None:
    metric = SEEDAccuracy()
    metric.update(["A", "B", "C.", "D", "A"], ["A", "B", "C", "A", "A"], [1, 9, 9, 10, 12])
    out = metric.compute()
    assert out["acc"] == pytest.approx(3 / 5)
    assert out["acc_image"] == pytest.approx(2 / 3) and out["acc_video"] == pytest.approx(1 / 2)
    assert out["acc/9"] == 0.5 and out["acc/12"] == 1.0 and "acc/2" not in out
    plain = SEEDAccuracy()
    plain.update(["A"], ["B"])
    assert plain.compute() == {"acc": 0.0}

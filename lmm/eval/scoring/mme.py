"""MME: 14 yes/no subtasks, two questions per image, scored by acc + acc+ (eval.md 4.7)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lmm.eval.scoring._state import RecordMetric, group_all_true, ratio, stable_hash
from lmm.eval.scoring.normalize import parse_mme_yes_no

MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
                  "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
MME_SUBTASKS = MME_PERCEPTION + MME_COGNITION


class MMEMetric(RecordMetric):
    """MME scores with the eval_tool's yes/no parser.

    update(preds, answers, categories, image_ids): raw model texts, gold "Yes"/"No", subtask names (the question
    file's `category`) and the image each question is about (LLaVA's `question_id`, shared by the image's two
    questions). An image counts for acc+ when all its questions are right.
    compute(): "<subtask>/acc", "<subtask>/acc_plus" (fractions) and "<subtask>/score" = 100*acc + 100*acc+ for each
    subtask seen; "perception_score" and "cognition_score" = sums of the subtask scores (LLaVA-1.5 reports
    perception only, max 2000).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(width=3, **kwargs)  # columns: subtask index, image key, correct

    def update(self, preds: Sequence[str], answers: Sequence[str], categories: Sequence[str],
               image_ids: Sequence[str]) -> None:
        rows = []
        for pred, gold, cat, image in zip(preds, answers, categories, image_ids, strict=True):
            if cat not in MME_SUBTASKS:
                raise ValueError(f"unknown MME subtask {cat!r}")
            correct = parse_mme_yes_no(pred) == gold.lower()
            rows.append((MME_SUBTASKS.index(cat), stable_hash(f"{cat}/{image}"), int(correct)))
        self._add_rows(rows)

    def compute(self) -> dict[str, float]:
        rows = self._rows()
        out: dict[str, float] = {}
        totals = {"perception_score": 0.0, "cognition_score": 0.0}
        for index, name in enumerate(MME_SUBTASKS):
            sub = rows[rows[:, 0] == index]
            if not len(sub):
                continue
            ok = sub[:, 2].bool()
            _, image_ok = group_all_true(sub[:, 1], ok)
            acc, acc_plus = ratio(ok.sum(), len(ok)), ratio(image_ok.sum(), len(image_ok))
            score = 100 * acc + 100 * acc_plus
            out.update({f"{name}/acc": acc, f"{name}/acc_plus": acc_plus, f"{name}/score": score})
            totals["perception_score" if name in MME_PERCEPTION else "cognition_score"] += score
        return out | totals

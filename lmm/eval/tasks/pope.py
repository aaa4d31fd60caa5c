"""POPE on COCO val2014 (eval.md 4.6): per-split yes/no F1; LLaVA reports the mean F1 of the three splits."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from lmm.data.jsonl import read_jsonl
from lmm.eval.files import BenchmarkFileError, require_file, where
from lmm.eval.files import field as get
from lmm.eval.scoring import POPE_SPLITS, POPEMetric, parse_pope_yes_no
from lmm.eval.tasks.base import LOCAL, Benchmark, Question


class POPE(Benchmark):
    """POPE on COCO val2014: per-split yes/no F1 (LLaVA reports the mean F1 of the three splits).

    Labels are paired with questions by position within each split (category), exactly as eval_pope.py zips the
    answers with the label file, so a split whose question and label counts differ is refused.
    """

    kind = "pope"
    headline_key = "mean_f1"

    def __init__(self, questions: str, label_dir: str, image_root: str, splits: Sequence[str] = POPE_SPLITS,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.questions_file, self.label_dir, self.image_root, self.splits = questions, label_dir, image_root, \
            tuple(splits)

    def files(self) -> dict[str, str | None]:
        return {"questions": self.questions_file, "label_dir": self.label_dir}

    def _load(self) -> list[Question]:
        rows = self._llava_questions(self.questions_file, self.image_root)
        label_dir = require_file(self.label_dir, "POPE label folder")
        by_split: dict[str, list[Question]] = defaultdict(list)
        for _, row, q in rows:
            split = get(row, "category", q.where, str)
            if split not in POPE_SPLITS:
                raise BenchmarkFileError(f"{q.where}: POPE category {split!r} is not one of {POPE_SPLITS}")
            q.meta["category"] = split
            by_split[split].append(q)
        qs = []
        for split in self.splits:
            files = sorted(label_dir.glob(f"*pope_{split}.json"))
            if not files:
                raise BenchmarkFileError(f"{label_dir}: no label file *pope_{split}.json")
            labels = [(lineno, get(r, "label", where(files[0], lineno), str)) for lineno, r in
                      read_jsonl(files[0], BenchmarkFileError)]
            split_qs = by_split.get(split, [])
            if len(labels) != len(split_qs):
                raise BenchmarkFileError(f"POPE {split}: {len(split_qs)} questions in {self.questions_file} but "
                                         f"{len(labels)} labels in {files[0]} (they are paired by position)")
            for q, (lineno, label) in zip(split_qs, labels, strict=True):
                if label not in ("yes", "no"):
                    raise BenchmarkFileError(f"{where(files[0], lineno)}: label must be 'yes' or 'no', got {label!r}")
                q.reference = label
            qs += split_qs
        return sorted(qs, key=lambda q: q.uid)  # question-file order, which the answer file must keep

    def question_record(self, q: Question, text: str, score: float | None) -> dict[str, Any]:
        """+ split, label and parsed prediction: the per-split F1 is recomputed from them."""
        return super().question_record(q, text, score) | {"split": q.meta["category"], "label": q.reference,
                                                          "pred": parse_pope_yes_no(text)}

    def _score(self, qs: list[Question], texts: list[str]) -> tuple[dict[str, float], list[float | None]]:
        metric = POPEMetric(categories=self.splits, **LOCAL)
        metric.update(texts, [q.reference for q in qs], [q.meta["category"] for q in qs])
        return metric.compute(), [float(parse_pope_yes_no(t) == q.reference) for q, t in zip(qs, texts, strict=True)]

"""Pair a LLaVA POPE answers.jsonl with the POPE label files, the way eval_pope.py does (eval.md 4.6).

Answers carry no labels: a split's answers (filtered by category, in file order) are zipped by position with that
split's label file, so the answers file must keep question-file order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmm.data.jsonl import read_jsonl
from lmm.eval.scoring.pope import POPEMetric


def _rows(path: str | Path) -> list[dict]:
    return [row for _, row in read_jsonl(path)]


@dataclass
class PopeSplit:
    category: str
    predictions: list[str]  # model texts, in answer-file order
    labels: list[str]  # "yes" / "no", in label-file order


def load_pope_splits(answers_file: str | Path, label_dir: str | Path,
                     question_file: str | Path | None = None) -> dict[str, PopeSplit]:
    """One PopeSplit per label file `<prefix>_pope_<category>.json` in `label_dir` that has answers.

    An answer's category is its own `category` field, else that of its question (by `question_id`) in
    `question_file` (LLaVA's answer files have no category). A split whose answer and label counts differ raises
    ValueError (eval_pope.py would silently truncate).
    """
    categories = {}
    if question_file is not None:
        categories = {q["question_id"]: q["category"] for q in _rows(question_file)}
    answers = _rows(answers_file)
    splits: dict[str, PopeSplit] = {}
    for label_file in sorted(Path(label_dir).glob("*pope_*.json")):
        category = label_file.stem.split("pope_", 1)[1]
        preds = [a["text"] for a in answers if a.get("category", categories.get(a["question_id"])) == category]
        if not preds:
            continue
        labels = [row["label"] for row in _rows(label_file)]
        if len(preds) != len(labels):
            raise ValueError(f"POPE {category}: {len(preds)} answers but {len(labels)} labels in {label_file}")
        splits[category] = PopeSplit(category, preds, labels)
    return splits


def evaluate_pope_files(answers_file: str | Path, label_dir: str | Path,
                        question_file: str | Path | None = None) -> dict[str, float]:
    """POPEMetric over all splits found: "<split>/{acc,precision,recall,f1,yes_ratio}" and "mean_f1"."""
    splits = load_pope_splits(answers_file, label_dir, question_file)
    metric = POPEMetric(categories=sorted(splits))
    for split in splits.values():
        metric.update(split.predictions, split.labels, split.category)
    return metric.compute()

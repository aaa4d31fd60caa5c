"""POPE: yes/no object-hallucination probe scored per negative-sampling split (eval.md 4.6)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric

from lmm.eval.scoring._state import ratio
from lmm.eval.scoring.normalize import parse_pope_yes_no

POPE_SPLITS = ("adversarial", "popular", "random")


class POPEMetric(Metric):
    """Accuracy, precision, recall, F1 and yes-ratio with "yes" as the positive class, LLaVA's yes/no parser.

    update(preds, labels, categories=None): raw model texts, label strings (anything but "no" is yes, as in
    eval_pope.py) and, if the metric was built with ``categories``, each question's split (a str = all the same).
    compute(): without categories {"acc", "precision", "recall", "f1", "yes_ratio"}; with categories the same keys
    as "<split>/<key>" for every split seen, plus "mean_f1" (the single POPE number LLaVA reports).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, categories: Sequence[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.categories = tuple(categories or ())
        # rows: category; columns: TP, FP, TN, FN
        self.add_state("counts", default=torch.zeros(max(1, len(self.categories)), 4, dtype=torch.long),
                       dist_reduce_fx="sum")

    def _rows(self, n: int, categories: Sequence[str] | str | None) -> list[int]:
        if not self.categories:
            if categories is not None:
                raise ValueError("this POPEMetric has no categories; build it with categories=...")
            return [0] * n
        if categories is None:
            raise ValueError(f"categories required, one of {self.categories}")
        cats = [categories] * n if isinstance(categories, str) else list(categories)
        if len(cats) != n:
            raise ValueError(f"{len(cats)} categories for {n} predictions")
        if unknown := set(cats) - set(self.categories):
            raise ValueError(f"unknown POPE categories {sorted(unknown)}; expected {self.categories}")
        return [self.categories.index(c) for c in cats]

    def update(self, preds: Sequence[str], labels: Sequence[str],
               categories: Sequence[str] | str | None = None) -> None:
        rows = self._rows(len(preds), categories)
        add = torch.zeros_like(self.counts)
        for row, pred, label in zip(rows, preds, labels, strict=True):
            yes, positive = parse_pope_yes_no(pred) == "yes", label != "no"
            add[row, (0 if positive else 1) if yes else (3 if positive else 2)] += 1
        self.counts += add

    @staticmethod
    def _scores(tp: int, fp: int, tn: int, fn: int) -> dict[str, float]:
        precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
        return {"acc": ratio(tp + tn, tp + fp + tn + fn), "precision": precision, "recall": recall,
                "f1": ratio(2 * precision * recall, precision + recall), "yes_ratio": ratio(tp + fp, tp + fp + tn + fn)}

    def compute(self) -> dict[str, float]:
        counts = self.counts.tolist()
        if not self.categories:
            return self._scores(*counts[0])
        out: dict[str, float] = {}
        f1s = []
        for name, row in zip(self.categories, counts, strict=True):
            if sum(row):
                scores = self._scores(*row)
                out.update({f"{name}/{k}": v for k, v in scores.items()})
                f1s.append(scores["f1"])
        out["mean_f1"] = ratio(sum(f1s), len(f1s))
        return out

"""Short-answer accuracies: VQA accuracy (VQAv2, VizWiz, TextVQA) and GQA exact match (eval.md 3, 4.2)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric

from lmm.eval.scoring._state import ratio
from lmm.eval.scoring.normalize import gqa_postprocess, normalize_vqa_answer


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def vqa_score(prediction: str, answers: Sequence[str], official: bool = False) -> float:
    """VQA accuracy of one question: min(1, matches among the other answers / 3), averaged over leave-one-out sets.

    With k of n human answers equal to the prediction, the k sets that drop a match see k-1 matches and the other
    n-k see k (for n=10: k = 0,1,2,3,>=4 -> 0, .3, .6, .9, 1). Default: prediction and answers go through the full
    EvalAI processor (LLaVA, m4c). ``official=True`` emulates vqaEval.py: steps 3-6 only when the answers are not all
    identical, otherwise raw (stripped) strings are compared.
    """
    if not answers:
        raise ValueError("a VQA question needs at least one human answer")
    pred, gts = _clean(prediction), [_clean(a) for a in answers]
    if not official or len(set(gts)) > 1:
        pred = normalize_vqa_answer(pred, official=official)
        gts = [normalize_vqa_answer(a, official=official) for a in gts]
    n, k = len(gts), sum(g == pred for g in gts)
    return (k * min(1.0, (k - 1) / 3) + (n - k) * min(1.0, k / 3)) / n


class VQAAccuracy(Metric):
    """Mean VQA accuracy. update(preds, answers): raw model texts and, per question, its (10) human answers.

    compute() -> {"acc": fraction in [0, 1]} (published tables show it x100).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, official: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.official = official
        self.add_state("score_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str], answers: Sequence[Sequence[str]]) -> None:
        self.score_sum += sum(vqa_score(p, a, self.official) for p, a in zip(preds, answers, strict=True))
        self.total += len(preds)

    def compute(self) -> dict[str, float]:
        return {"acc": ratio(self.score_sum, self.total)}


class GQAAccuracy(Metric):
    """GQA testdev accuracy: LLaVA's post-processing (rstrip '.', lowercase) then exact match with the gold answer.

    update(preds, answers): raw model texts and gold answer strings. compute() -> {"acc"}.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str], answers: Sequence[str]) -> None:
        self.correct += sum(gqa_postprocess(p) == a for p, a in zip(preds, answers, strict=True))
        self.total += len(preds)

    def compute(self) -> dict[str, float]:
        return {"acc": ratio(self.correct, self.total)}

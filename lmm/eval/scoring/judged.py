"""Judge-scored open-ended benchmarks: MM-Vet and LLaVA-Bench-in-the-Wild (eval.md 4.10, 4.11).

The judge runs inside update(), so each rank grades its own shard; only the resulting sums are synced.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric

from lmm.eval.scoring._state import ratio
from lmm.eval.scoring.judge import Judge, RuleJudge

MMVET_CAPABILITIES = ("rec", "ocr", "know", "gen", "spat", "math")
LLAVA_BENCH_CATEGORIES = ("conv", "detail", "complex")


class _JudgedMetric(Metric):
    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, judge: Judge | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.judge: Judge = judge if judge is not None else RuleJudge()


class MMVetScore(_JudgedMetric):
    """MM-Vet: mean judge score x 100, overall and per capability (a question may count for several).

    update(preds, questions, answers, capabilities=None): raw model texts, questions, ground truths (with <AND>/<OR>)
    and each question's capability list (rec, ocr, know, gen, spat, math). compute(): {"score"} plus "score/<cap>"
    for capabilities seen. Without a judge the RuleJudge is used: see its warning about comparability.
    """

    def __init__(self, judge: Judge | None = None, **kwargs: Any) -> None:
        super().__init__(judge, **kwargs)
        # index 0: all questions, then one per capability
        self.add_state("score_sum", default=torch.zeros(7, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(7, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str], questions: Sequence[str], answers: Sequence[str],
               capabilities: Sequence[Sequence[str]] | None = None) -> None:
        caps = [()] * len(preds) if capabilities is None else capabilities
        sums, counts = [0.0] * 7, [0] * 7
        for pred, question, answer, cap in zip(preds, questions, answers, caps, strict=True):
            if unknown := set(cap) - set(MMVET_CAPABILITIES):
                raise ValueError(f"unknown MM-Vet capabilities {sorted(unknown)}")
            score = float(self.judge.grade_mmvet(question, answer, pred.strip()))
            for index in {0, *(1 + MMVET_CAPABILITIES.index(c) for c in cap)}:
                sums[index] += score
                counts[index] += 1
        self.score_sum += torch.tensor(sums, dtype=torch.float64, device=self.device)
        self.count += torch.tensor(counts, device=self.device)

    def compute(self) -> dict[str, float]:
        out = {"score": 100 * ratio(self.score_sum[0], self.count[0])}
        for index, cap in enumerate(MMVET_CAPABILITIES, start=1):
            if self.count[index]:
                out[f"score/{cap}"] = 100 * ratio(self.score_sum[index], self.count[index])
        return out


class LLaVABenchScore(_JudgedMetric):
    """LLaVA-Bench-in-the-Wild relative score: 100 * mean(model scores) / mean(GPT-4 reference scores).

    update(preds, questions, references, contexts, categories): raw model texts, questions, the GPT-4 reference
    answers (answers_gpt4.jsonl), the image captions (context.jsonl) and categories (conv, detail, complex).
    Unparsable reviews count as (-1, -1), as in LLaVA's summarize_gpt_review.py. compute(): {"score",
    "score/<category>" for categories seen, "model_mean", "reference_mean" (1-10 judge scales), "n_failed"}.
    """

    def __init__(self, judge: Judge | None = None, **kwargs: Any) -> None:
        super().__init__(judge, **kwargs)
        # index 0: all questions, then one per category; columns: reference sum, model sum
        self.add_state("score_sum", default=torch.zeros(4, 2, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(4, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("failed", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str], questions: Sequence[str], references: Sequence[str],
               contexts: Sequence[str | Sequence[str]], categories: Sequence[str]) -> None:
        sums, counts, failed = [[0.0, 0.0] for _ in range(4)], [0] * 4, 0
        for pred, question, ref, ctx, cat in zip(preds, questions, references, contexts, categories, strict=True):
            if cat not in LLAVA_BENCH_CATEGORIES:
                raise ValueError(f"unknown LLaVA-Bench category {cat!r}")
            ref_score, model_score = self.judge.review_llava_bench(ctx, question, ref, pred.strip())
            failed += int((ref_score, model_score) == (-1, -1))
            for index in (0, 1 + LLAVA_BENCH_CATEGORIES.index(cat)):
                sums[index][0] += ref_score
                sums[index][1] += model_score
                counts[index] += 1
        self.score_sum += torch.tensor(sums, dtype=torch.float64, device=self.device)
        self.count += torch.tensor(counts, device=self.device)
        self.failed += failed

    def compute(self) -> dict[str, float]:
        ref, model = self.score_sum[:, 0], self.score_sum[:, 1]
        out = {"score": 100 * ratio(model[0], ref[0])}
        for index, cat in enumerate(LLAVA_BENCH_CATEGORIES, start=1):
            if self.count[index]:
                out[f"score/{cat}"] = 100 * ratio(model[index], ref[index])
        out.update(model_mean=ratio(model[0], self.count[0]), reference_mean=ratio(ref[0], self.count[0]),
                   n_failed=float(self.failed))
        return out

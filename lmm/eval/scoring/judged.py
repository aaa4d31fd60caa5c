"""Judge-scored open-ended benchmarks: MM-Vet and LLaVA-Bench-in-the-Wild (eval.md 4.10, 4.11).

The judge runs inside update(), so each rank grades its own shard; only the resulting sums are synced. LLM judges
are noisy, so both metrics can grade every answer `runs` times (LLaVA averages 3 runs, eval.md 4.12 reports
mean +- std): every key is the mean over runs, "score_std" the spread of the total, compute_runs() each run alone.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric

from lmm.eval.scoring._state import ratio
from lmm.eval.scoring.judge import Judge, RuleJudge

MMVET_CAPABILITIES = ("rec", "ocr", "know", "gen", "spat", "math")
LLAVA_BENCH_CATEGORIES = ("conv", "detail", "complex")
_COMBOS = 1 << len(MMVET_CAPABILITIES)  # a capability set as a bit mask: every combination has a fixed slot


def mmvet_combination(capabilities: Sequence[str]) -> str:
    """MM-Vet's name of a capability integration, e.g. ["ocr", "rec"] -> "rec_ocr" (canonical capability order)."""
    return "_".join(c for c in MMVET_CAPABILITIES if c in capabilities)


class _JudgedMetric(Metric):
    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, judge: Judge | None = None, runs: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(runs) < 1:
            raise ValueError(f"runs must be >= 1, got {runs}")
        self.judge: Judge = judge if judge is not None else RuleJudge()
        self.runs = int(runs)

    def _run_scores(self, run: int) -> dict[str, float]:
        raise NotImplementedError

    def compute_runs(self) -> list[dict[str, float]]:
        """Each judge run's scores on its own (synced across ranks first, like compute())."""
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync,
                               distributed_available=self.distributed_available_fn):
            return [self._run_scores(r) for r in range(self.runs)]

    def compute(self) -> dict[str, float]:
        return mean_over_runs([self._run_scores(r) for r in range(self.runs)])


def mean_over_runs(per_run: list[dict[str, float]]) -> dict[str, float]:
    """The judged scores reported: each score's mean over the judge runs, and with several runs the sample std of
    their totals ("score_std"), as LLaVA reports MM-Vet."""
    out = {k: statistics.fmean(r[k] for r in per_run) for k in per_run[0]}
    if len(per_run) > 1:
        out["score_std"] = statistics.stdev(r["score"] for r in per_run)
    return out


class MMVetScore(_JudgedMetric):
    """MM-Vet: mean judge score x 100, overall, per capability and per capability integration (eval.md 4.11).

    update(preds, questions, answers, capabilities=None): raw model texts, questions, ground truths (with <AND>/<OR>)
    and each question's capability list (rec, ocr, know, gen, spat, math). compute(): {"score"} plus "score/<cap>"
    for capabilities seen (a question counts for each of its capabilities) and "score_combo/<combination>" for each
    exact capability set seen (e.g. "score_combo/rec_ocr_spat"; MM-Vet has 16), and "score_std" with runs > 1.
    Without a judge the RuleJudge is used: see its warning about comparability.
    """

    def __init__(self, judge: Judge | None = None, runs: int = 1, **kwargs: Any) -> None:
        super().__init__(judge, runs, **kwargs)
        # index 0: all questions, then one per capability
        self.add_state("score_sum", default=torch.zeros(self.runs, 7, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(7, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("combo_sum", default=torch.zeros(self.runs, _COMBOS, dtype=torch.float64),
                       dist_reduce_fx="sum")
        self.add_state("combo_count", default=torch.zeros(_COMBOS, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str], questions: Sequence[str], answers: Sequence[str],
               capabilities: Sequence[Sequence[str]] | None = None) -> None:
        caps = [()] * len(preds) if capabilities is None else capabilities
        sums, counts = torch.zeros(self.runs, 7, dtype=torch.float64), torch.zeros(7, dtype=torch.long)
        combo_sums = torch.zeros(self.runs, _COMBOS, dtype=torch.float64)
        combo_counts = torch.zeros(_COMBOS, dtype=torch.long)
        for pred, question, answer, cap in zip(preds, questions, answers, caps, strict=True):
            if unknown := set(cap) - set(MMVET_CAPABILITIES):
                raise ValueError(f"unknown MM-Vet capabilities {sorted(unknown)}")
            scores = torch.tensor([float(self.judge.grade_mmvet(question, answer, pred.strip()))
                                   for _ in range(self.runs)], dtype=torch.float64)
            index = sorted({0, *(1 + MMVET_CAPABILITIES.index(c) for c in cap)})
            sums[:, index] += scores[:, None]
            counts[index] += 1
            mask = sum(1 << MMVET_CAPABILITIES.index(c) for c in set(cap))
            if mask:
                combo_sums[:, mask] += scores
                combo_counts[mask] += 1
        self.score_sum += sums.to(self.device)
        self.count += counts.to(self.device)
        self.combo_sum += combo_sums.to(self.device)
        self.combo_count += combo_counts.to(self.device)

    def _run_scores(self, run: int) -> dict[str, float]:
        sums = self.score_sum[run]
        out = {"score": 100 * ratio(sums[0], self.count[0])}
        for index, cap in enumerate(MMVET_CAPABILITIES, start=1):
            if self.count[index]:
                out[f"score/{cap}"] = 100 * ratio(sums[index], self.count[index])
        for mask in torch.nonzero(self.combo_count).flatten().tolist():
            caps = [c for i, c in enumerate(MMVET_CAPABILITIES) if mask >> i & 1]
            out[f"score_combo/{mmvet_combination(caps)}"] = 100 * ratio(self.combo_sum[run, mask],
                                                                        self.combo_count[mask])
        return out


class LLaVABenchScore(_JudgedMetric):
    """LLaVA-Bench-in-the-Wild relative score: 100 * mean(model scores) / mean(GPT-4 reference scores).

    update(preds, questions, references, contexts, categories): raw model texts, questions, the GPT-4 reference
    answers (answers_gpt4.jsonl), the image captions (context.jsonl) and categories (conv, detail, complex).
    Unparsable reviews count as (-1, -1), as in LLaVA's summarize_gpt_review.py. compute(): {"score",
    "score/<category>" for categories seen, "model_mean", "reference_mean" (1-10 judge scales), "n_failed"}, each
    the mean over runs, and "score_std" with runs > 1.
    """

    def __init__(self, judge: Judge | None = None, runs: int = 1, **kwargs: Any) -> None:
        super().__init__(judge, runs, **kwargs)
        # index 0: all questions, then one per category; columns: reference sum, model sum
        self.add_state("score_sum", default=torch.zeros(self.runs, 4, 2, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(4, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("failed", default=torch.zeros(self.runs, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str], questions: Sequence[str], references: Sequence[str],
               contexts: Sequence[str | Sequence[str]], categories: Sequence[str]) -> None:
        sums, counts = torch.zeros(self.runs, 4, 2, dtype=torch.float64), torch.zeros(4, dtype=torch.long)
        failed = torch.zeros(self.runs, dtype=torch.long)
        for pred, question, ref, ctx, cat in zip(preds, questions, references, contexts, categories, strict=True):
            if cat not in LLAVA_BENCH_CATEGORIES:
                raise ValueError(f"unknown LLaVA-Bench category {cat!r}")
            index = [0, 1 + LLAVA_BENCH_CATEGORIES.index(cat)]
            for run in range(self.runs):
                pair = self.judge.review_llava_bench(ctx, question, ref, pred.strip())
                failed[run] += int(tuple(pair) == (-1, -1))
                sums[run, index] += torch.tensor(pair, dtype=torch.float64)
            counts[index] += 1
        self.score_sum += sums.to(self.device)
        self.count += counts.to(self.device)
        self.failed += failed.to(self.device)

    def _run_scores(self, run: int) -> dict[str, float]:
        ref, model = self.score_sum[run, :, 0], self.score_sum[run, :, 1]
        out = {"score": 100 * ratio(model[0], ref[0])}
        for index, cat in enumerate(LLAVA_BENCH_CATEGORIES, start=1):
            if self.count[index]:
                out[f"score/{cat}"] = 100 * ratio(model[index], ref[index])
        out.update(model_mean=ratio(model[0], self.count[0]), reference_mean=ratio(ref[0], self.count[0]),
                   n_failed=float(self.failed[run]))
        return out

"""Multiple-choice accuracies: ScienceQA, MMBench (circular) and SEED-Bench (eval.md 4.4, 4.8, 4.9)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torchmetrics import Metric

from lmm.eval.scoring._state import RecordMetric, group_all_true, ratio
from lmm.eval.scoring.normalize import extract_mmbench_letter, extract_sqa_letter

_LETTERS = "ABCDE"


class ScienceQAAccuracy(Metric):
    """ScienceQA accuracy with eval_science_qa.py's letter extraction.

    update(preds, answers, num_choices, has_image=None): raw model texts, gold choice indices (problems.json
    `answer`), the number of choices of each question, and whether it has an image (prompt contains "<image>").
    A letter beyond the question's choices counts wrong. compute(): {"acc"} over all questions and, once image
    questions were seen, "acc_img" (the reported SQA-IMG).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.zeros(2, dtype=torch.long), dist_reduce_fx="sum")  # all, img
        self.add_state("total", default=torch.zeros(2, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str], answers: Sequence[int], num_choices: Sequence[int],
               has_image: Sequence[bool] | None = None) -> None:
        images = [False] * len(preds) if has_image is None else has_image
        correct, total = [0, 0], [0, 0]
        for pred, gold, n, image in zip(preds, answers, num_choices, images, strict=True):
            letter = extract_sqa_letter(pred.strip())
            ok = int(letter in _LETTERS[:n] and _LETTERS.index(letter) == gold)
            correct[0], total[0] = correct[0] + ok, total[0] + 1
            if image:
                correct[1], total[1] = correct[1] + ok, total[1] + 1
        self.correct += torch.tensor(correct, device=self.device)
        self.total += torch.tensor(total, device=self.device)

    def compute(self) -> dict[str, float]:
        out = {"acc": ratio(self.correct[0], self.total[0])}
        if self.total[1]:
            out["acc_img"] = ratio(self.correct[1], self.total[1])
        return out


class MMBenchCircular(RecordMetric):
    """MMBench circular accuracy with rule-based letter extraction only (no LLM judge; unresolved rows are wrong).

    update(preds, answers, indices, options=None, categories=None, l2_categories=None): raw model texts, gold
    letters, the TSV `index` of each row (a base question and its rotated copies share index mod 1e6), each row's
    options {letter: text} (used by extraction; default letters A-D) and optionally each row's `category` and
    `l2-category`, which must be among the ``categories`` / ``l2_categories`` the metric was built with. A base
    question counts only if every row of its group is right. compute(): {"acc"} over base questions, plus
    "acc/<category>" and "acc_l2/<l2-category>" for those seen (eval.md 4.8).
    """

    def __init__(self, categories: Sequence[str] = (), l2_categories: Sequence[str] = (), **kwargs: Any) -> None:
        # columns: base index, correct, category index, l2-category index (-1: none)
        super().__init__(width=4, **kwargs)
        self.categories, self.l2_categories = tuple(categories), tuple(l2_categories)

    @staticmethod
    def _indices(values: Sequence[str | None] | None, known: tuple[str, ...], n: int, what: str) -> list[int]:
        if values is None:
            return [-1] * n
        if len(values) != n:
            raise ValueError(f"{len(values)} {what} values for {n} predictions")
        out = []
        for value in values:
            if value is not None and value not in known:
                raise ValueError(f"unknown {what} {value!r}; build the metric with {what}=[...]")
            out.append(-1 if value is None else known.index(value))
        return out

    def update(self, preds: Sequence[str], answers: Sequence[str], indices: Sequence[int],
               options: Sequence[Mapping[str, str]] | None = None, categories: Sequence[str] | None = None,
               l2_categories: Sequence[str] | None = None) -> None:
        opts = [None] * len(preds) if options is None else options
        cats = self._indices(categories, self.categories, len(preds), "categories")
        l2s = self._indices(l2_categories, self.l2_categories, len(preds), "l2_categories")
        rows = []
        for pred, gold, index, opt, cat, l2 in zip(preds, answers, indices, opts, cats, l2s, strict=True):
            letter = extract_mmbench_letter(pred.strip(), opt)
            rows.append((int(index) % 1_000_000, int(letter == gold), cat, l2))
        self._add_rows(rows)

    def compute(self) -> dict[str, float]:
        rows = self._rows()
        groups, group_ok = group_all_true(rows[:, 0], rows[:, 1].bool())
        out = {"acc": ratio(group_ok.sum(), len(groups))}
        if not len(rows):
            return out
        _, inverse = torch.unique(rows[:, 0], return_inverse=True)
        for column, names, prefix in ((2, self.categories, "acc/"), (3, self.l2_categories, "acc_l2/")):
            # a group's (l2-)category: its rows agree; amax also takes a labelled row over an unlabelled one
            group_cat = torch.full_like(groups, -1).scatter_reduce(0, inverse, rows[:, column], "amax")
            for index, name in enumerate(names):
                mask = group_cat == index
                if mask.any():
                    out[prefix + name] = ratio(group_ok[mask].sum(), mask.sum())
        return out


class SEEDAccuracy(Metric):
    """SEED-Bench accuracy: correct iff the (stripped) output equals the gold letter exactly.

    update(preds, answers, question_type_ids=None): raw model texts, gold letters and the 1-12 dimension ids.
    compute(): {"acc"} over all questions and, when dimension ids were given, "acc_image" (dims 1-9, = SEED-IMG),
    "acc_video" (10-12) and "acc/<dim>" for each dimension seen.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # index = question_type_id (0: not given)
        self.add_state("correct", default=torch.zeros(13, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(13, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str], answers: Sequence[str],
               question_type_ids: Sequence[int] | None = None) -> None:
        dims = [0] * len(preds) if question_type_ids is None else [int(d) for d in question_type_ids]
        if any(not 0 <= d <= 12 for d in dims):
            raise ValueError("SEED question_type_id must lie in 1..12")
        ok = [p.strip() == a for p, a, _ in zip(preds, answers, dims, strict=True)]
        index = torch.tensor(dims, dtype=torch.long, device=self.device)
        self.correct += torch.bincount(index[torch.tensor(ok, dtype=torch.bool, device=self.device)], minlength=13)
        self.total += torch.bincount(index, minlength=13)

    def compute(self) -> dict[str, float]:
        correct, total = self.correct.tolist(), self.total.tolist()
        out = {"acc": ratio(sum(correct), sum(total))}
        for key, dims in (("acc_image", range(1, 10)), ("acc_video", range(10, 13))):
            if sum(total[d] for d in dims):
                out[key] = ratio(sum(correct[d] for d in dims), sum(total[d] for d in dims))
        out.update({f"acc/{d}": ratio(correct[d], total[d]) for d in range(1, 13) if total[d]})
        return out

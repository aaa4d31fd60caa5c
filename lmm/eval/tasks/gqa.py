"""GQA testdev-balanced (eval.md 4.2): LLaVA's post-processing, exact match with the official gold answer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lmm.eval.files import BenchmarkFileError, read_json, require_file, write_json
from lmm.eval.files import field as get
from lmm.eval.scoring import GQAAccuracy, gqa_postprocess
from lmm.eval.tasks.base import LOCAL, Question, QuestionFileBenchmark


class GQA(QuestionFileBenchmark):
    """GQA testdev-balanced: LLaVA's post-processing, exact match with the official gold answer."""

    kind = "gqa"

    def _load(self) -> list[Question]:
        qs = [q for _, _, q in self._llava_questions(self.questions_file, self.image_root)]
        if self.annotations:
            p = require_file(self.annotations, "GQA questions JSON (testdev_balanced_questions.json)")
            gt = read_json(p)
            if not isinstance(gt, dict):
                raise BenchmarkFileError(f"{p}: expected a JSON object mapping question ids to questions")
            for q in qs:
                entry = gt.get(str(q.question_id))
                if entry is None:
                    raise BenchmarkFileError(f"{q.where}: question_id {q.question_id!r} is not in {p}")
                q.reference = get(entry, "answer", f"{p}: question {q.question_id!r}", str)
        return qs

    def _score(self, qs: list[Question], texts: list[str]) -> tuple[dict[str, float], list[float | None]]:
        metric = GQAAccuracy(**LOCAL)
        metric.update(texts, [q.reference for q in qs])
        return metric.compute(), [float(gqa_postprocess(t) == q.reference) for q, t in zip(qs, texts, strict=True)]

    def write_submission(self, out_dir: Path, qs: Sequence[Question], texts: Sequence[str]) -> list[Path]:
        rows = [{"questionId": q.question_id, "prediction": gqa_postprocess(t)} for q, t in zip(qs, texts, strict=True)]
        return [write_json(out_dir / "testdev_balanced_predictions.json", rows)]

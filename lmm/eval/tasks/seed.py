"""SEED-Bench v1 (eval.md 4.9): exact letter match; SEED-IMG is image dimensions 1-9."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmm.data.jsonl import read_jsonl
from lmm.eval.files import BenchmarkFileError, read_json, require_file, where
from lmm.eval.files import field as get
from lmm.eval.scoring import SEEDAccuracy
from lmm.eval.tasks.base import LOCAL, Question, QuestionFileBenchmark


class SEED(QuestionFileBenchmark):
    """SEED-Bench v1: exact letter match (convert_seed_for_submission.py); `image_only` keeps dimensions 1-9.

    The paper's "SEED" is all 19,242 questions (video ones as their middle frame); SEED-IMG is dimensions 1-9.
    """

    kind = "seed"

    def __init__(self, questions: str | Path | None = None, annotations: str | Path | None = None,
                 image_root: str | Path | None = None, image_only: bool = True, **kwargs: Any) -> None:
        super().__init__(questions, annotations, image_root, **kwargs)
        self.image_only = image_only
        self.headline_key = "acc_image" if image_only else "acc"

    def _load(self) -> list[Question]:
        gt: dict[str, dict] = {}
        if self.annotations:
            p = require_file(self.annotations, "SEED-Bench.json")
            for i, item in enumerate(get(read_json(p), "questions", where(p), list)):
                gt[str(get(item, "question_id", f"{p}: questions[{i}]"))] = item | {"_at": f"{p}: questions[{i}]"}
        # video questions point at frames that may not be extracted: check images only for what is kept
        raw = []
        p = require_file(self.questions_file, "SEED question file")
        for lineno, row in read_jsonl(p, BenchmarkFileError):
            at = where(p, lineno)
            qid = get(row, "question_id", at, (str, int))
            entry = gt.get(str(qid))
            if self.annotations and entry is None:
                raise BenchmarkFileError(f"{at}: question_id {qid!r} is not in {self.annotations}")
            dim = int(get(entry, "question_type_id", entry["_at"])) if entry else None
            if self.image_only and dim is not None and dim > 9:
                continue
            image = self._image(self.image_root, get(row, "image", at, str), at)
            ref = (get(entry, "answer", entry["_at"], str), dim) if entry else None
            raw.append(Question(len(raw), qid, get(row, "text", at, str), image, at, ref))
        return raw

    def reference_text(self, q: Question) -> str:
        return q.reference[0] if q.reference else ""

    def _score(self, qs: list[Question], texts: list[str]) -> tuple[dict[str, float], list[float | None]]:
        metric = SEEDAccuracy(**LOCAL)
        metric.update(texts, [q.reference[0] for q in qs], [q.reference[1] for q in qs])
        return metric.compute(), [float(t.strip() == q.reference[0]) for q, t in zip(qs, texts, strict=True)]

    def write_submission(self, out_dir: Path, qs: Sequence[Question], texts: Sequence[str]) -> list[Path]:
        path = out_dir / "seed_upload.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"question_id": q.question_id, "prediction": t.strip()}) + "\n"
                                for q, t in zip(qs, texts, strict=True)))
        return [path]

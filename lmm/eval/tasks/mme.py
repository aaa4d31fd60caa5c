"""MME (eval.md 4.7): 14 yes/no subtasks; the perception score (max 2000) is what LLaVA-1.5 reports."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

from lmm.data.formats import SHORT_ANSWER, YES_NO_SUFFIX
from lmm.eval.files import BenchmarkFileError, require_file, where
from lmm.eval.files import field as get
from lmm.eval.scoring import MME_PERCEPTION, MME_SUBTASKS, MMEMetric, parse_mme_yes_no
from lmm.eval.tasks.base import LOCAL, Benchmark, Question


class MME(Benchmark):
    """MME: 14 yes/no subtasks, two questions per image; perception score (max 2000) is what LLaVA-1.5 reports.

    Gold answers come from the official release folder (`gt_root`/<subtask>/[questions_answers_YN/]<image>.txt,
    lines "question<TAB>Yes|No"), matched by restoring " Please answer yes or no." as convert_answer_to_mme.py does.
    Writes mme_results/<subtask>.txt for the official eval_tool.
    """

    kind = "mme"
    headline_key = "perception_score"
    headline_scale = 1.0

    def __init__(self, questions: str, gt_root: str, image_root: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.questions_file, self.gt_root = questions, gt_root
        self.image_root = image_root if image_root is not None else gt_root

    def files(self) -> dict[str, str | None]:
        return {"questions": self.questions_file, "gt_root": self.gt_root}

    def group_of(self, q: Question) -> Hashable:
        return (q.meta["category"], q.question_id)

    @staticmethod
    def question_of(text: str) -> str:
        return text.replace(SHORT_ANSWER, "").strip()

    def _gt_file(self, category: str, image: str) -> Path | None:
        stem = Path(image).stem + ".txt"
        for candidate in (Path(self.gt_root) / category / "questions_answers_YN" / stem,
                          Path(self.gt_root) / category / stem):
            if candidate.is_file():
                return candidate
        return None

    def _load(self) -> list[Question]:
        rows = self._llava_questions(self.questions_file, self.image_root, (str,))
        require_file(self.gt_root, "MME release folder (MME_Benchmark_release_version)")
        cache: dict[Path, dict[str, str]] = {}
        qs = []
        for _, row, q in rows:
            category = get(row, "category", q.where, str)
            if category not in MME_SUBTASKS:
                raise BenchmarkFileError(f"{q.where}: MME category {category!r} is not one of {MME_SUBTASKS}")
            q.meta["category"] = category
            gt_file = self._gt_file(category, q.question_id)
            if gt_file is None:
                raise BenchmarkFileError(f"{q.where}: no ground-truth file for {q.question_id!r} under "
                                         f"{self.gt_root}/{category}")
            if gt_file not in cache:
                table = {}
                for lineno, line in enumerate(gt_file.read_text(encoding="utf-8").splitlines(), start=1):
                    if not line.strip():
                        continue
                    parts = line.rstrip("\n").split("\t")
                    if len(parts) != 2 or parts[1].strip() not in ("Yes", "No"):
                        raise BenchmarkFileError(f"{where(gt_file, lineno)}: expected 'question<TAB>Yes|No', "
                                                 f"got {line!r:.120}")
                    table[parts[0].strip()] = parts[1].strip()
                cache[gt_file] = table
            question = self.question_of(q.text)
            base = question.replace(YES_NO_SUFFIX.strip(), "").strip()
            for key in (question, base + YES_NO_SUFFIX, base + " " + YES_NO_SUFFIX, base):
                if key in cache[gt_file]:
                    q.reference, q.meta["gt_question"] = cache[gt_file][key], key
                    break
            else:
                raise BenchmarkFileError(f"{q.where}: question {question!r} not found in {gt_file}")
            qs.append(q)
        return qs

    def _score(self, qs: list[Question], texts: list[str]) -> tuple[dict[str, float], list[float | None]]:
        metric = MMEMetric(**LOCAL)
        metric.update(texts, [q.reference for q in qs], [q.meta["category"] for q in qs],
                      [str(q.question_id) for q in qs])
        per = [float(parse_mme_yes_no(t) == q.reference.lower()) for q, t in zip(qs, texts, strict=True)]
        return metric.compute(), per

    def question_record(self, q: Question, text: str, score: float | None) -> dict[str, Any]:
        """+ subtask and image (acc+ needs both questions of an image); only perception enters the headline."""
        category = q.meta["category"]
        return super().question_record(q, text, score) | {"subtask": category, "image_id": str(q.question_id),
                                                          "in_headline": category in MME_PERCEPTION}

    def write_submission(self, out_dir: Path, qs: Sequence[Question], texts: Sequence[str]) -> list[Path]:
        lines: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for q, t in zip(qs, texts, strict=True):
            if q.reference is not None:
                image = Path(str(q.question_id)).name
                lines[q.meta["category"]].append((image, f"{image}\t{q.meta['gt_question']}\t{q.reference}\t{t}\n"))
        paths = []
        for category, rows in lines.items():
            rows.sort(key=lambda r: r[0])  # stable: the two questions of an image stay adjacent, in file order
            path = out_dir / "mme_results" / f"{category}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(r[1] for r in rows), encoding="utf-8")
            paths.append(path)
        return paths

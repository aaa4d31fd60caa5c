"""MMBench and MMBench-CN dev (eval.md 4.8): circular evaluation with rule-based option-letter extraction."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

from lmm.data.formats import MULTIPLE_CHOICE, MULTIPLE_CHOICE_CN
from lmm.eval.files import BenchmarkFileError, read_tsv, require_file, where
from lmm.eval.scoring import MMBenchCircular, extract_mmbench_letter
from lmm.eval.tasks.base import LOCAL, Benchmark, EmbeddedImage, Question


def _is_none(value: Any) -> bool:
    """LLaVA's is_none for TSV cells: missing, empty, or the strings pandas writes for NaN/None."""
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "nan", "none"))



class MMBench(Benchmark):
    """MMBench / MMBench-CN dev TSVs, circular evaluation with rule-based letter extraction (eval.md 4.8).

    Every TSV row (the rotated copies included) is asked once with LLaVA's layout "[hint\\n]question\\nA. ..." and
    the option-letter prompt (Chinese for `lang: cn`). Rows whose `image` cell is a short index refer to another
    row's image (VLMEvalKit's compact TSVs). Writes <name>_submission.tsv (the server's columns + prediction;
    save it as .xlsx for upload).
    """

    kind = "mmbench"
    REQUIRED = ("index", "question", "A", "B", "image")

    def __init__(self, tsv: str, lang: str = "en", **kwargs: Any) -> None:
        kwargs.setdefault("max_new_tokens", 1024)
        super().__init__(**kwargs)
        if lang not in ("en", "cn"):
            raise ValueError(f"MMBench lang must be 'en' or 'cn', got {lang!r}")
        self.tsv, self.lang = tsv, lang

    def files(self) -> dict[str, str | None]:
        return {"tsv": self.tsv}

    def group_of(self, q: Question) -> Hashable:
        return int(q.question_id) % 1_000_000

    def _load(self) -> list[Question]:
        p = require_file(self.tsv, "MMBench TSV")
        rows = list(read_tsv(p, self.REQUIRED))
        images = {row["index"]: row["image"] for _, row in rows if len(row["image"]) > 64}
        suffix = MULTIPLE_CHOICE if self.lang == "en" else MULTIPLE_CHOICE_CN
        categories, l2_categories = set(), set()
        qs = []
        for lineno, row in rows:
            at = where(p, lineno)
            try:
                index = int(row["index"])
            except ValueError as e:
                raise BenchmarkFileError(f"{at}: index must be an integer, got {row['index']!r}") from e
            options = {}
            for letter in "ABCD":
                if letter not in row or _is_none(row[letter]):
                    break
                options[letter] = row[letter]
            if len(options) < 2:
                raise BenchmarkFileError(f"{at}: fewer than two options")
            question = row["question"] if _is_none(row.get("hint")) else row["hint"] + "\n" + row["question"]
            text = question + "".join(f"\n{k}. {v}" for k, v in options.items()) + "\n" + suffix
            image = row["image"] if len(row["image"]) > 64 else images.get(row["image"])
            if image is None:
                raise BenchmarkFileError(f"{at}: image cell {row['image']!r:.40} is neither base64 nor the index of "
                                         "a row that has one")
            gold = None if _is_none(row.get("answer")) else row["answer"].strip()
            if gold is not None and gold not in options:
                raise BenchmarkFileError(f"{at}: answer {gold!r} is not one of the options {list(options)}")
            category = None if _is_none(row.get("category")) else row["category"]
            l2 = None if _is_none(row.get("l2-category")) else row["l2-category"]
            categories.add(category)
            l2_categories.add(l2)
            qs.append(Question(len(qs), index, text, EmbeddedImage(image, at), at, gold,
                               {"options": options, "category": category, "l2_category": l2, "row": row}))
        # breakdowns only when every row names its (l2-)category, as the official TSVs do
        self.categories = sorted(categories) if None not in categories else []
        self.l2_categories = sorted(l2_categories) if None not in l2_categories else []
        return qs

    def answer_record(self, q: Question, text: str, model_id: str) -> dict[str, Any]:
        record = super().answer_record(q, text, model_id)
        record.update(round_id=0, options=list(q.meta["options"].values()), option_char=list(q.meta["options"]))
        return record

    def question_record(self, q: Question, text: str, score: float | None) -> dict[str, Any]:
        """+ the base question (circular scoring: a group is right only if all its rotations are)."""
        return super().question_record(q, text, score) | {"group": int(q.question_id) % 1_000_000}

    def _score(self, qs: list[Question], texts: list[str]) -> tuple[dict[str, float], list[float | None]]:
        metric = MMBenchCircular(categories=self.categories, l2_categories=self.l2_categories, **LOCAL)
        metric.update(texts, [q.reference for q in qs], [q.question_id for q in qs], [q.meta["options"] for q in qs],
                      [q.meta["category"] for q in qs] if self.categories else None,
                      [q.meta["l2_category"] for q in qs] if self.l2_categories else None)
        per = [float(extract_mmbench_letter(t.strip(), q.meta["options"]) == q.reference)
               for q, t in zip(qs, texts, strict=True)]
        return metric.compute(), per

    def write_submission(self, out_dir: Path, qs: Sequence[Question], texts: Sequence[str]) -> list[Path]:
        drop = {"hint", "category", "source", "image", "comment", "l2-category"}
        header = [c for c in qs[0].meta["row"] if c not in drop] + ["prediction"]
        path = out_dir / f"{self.name}_submission.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)

        def cell(value: str) -> str:
            return value.replace("\t", " ").replace("\n", "\\n")

        body = ["\t".join(header)]
        body += ["\t".join(cell({**q.meta["row"], "prediction": t}.get(c, "")) for c in header)
                 for q, t in zip(qs, texts, strict=True)]
        path.write_text("\n".join(body) + "\n", encoding="utf-8")
        return [path]

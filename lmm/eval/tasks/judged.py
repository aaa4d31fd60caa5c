"""The judge-graded benchmarks: MM-Vet and LLaVA-Bench-in-the-Wild (eval.md 4.10-4.12), graded by eval.judge (an
OpenAI-compatible GPT-4 or local judge; offline, the RuleJudge stand-in)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmm.data.jsonl import read_jsonl
from lmm.eval.files import BenchmarkFileError, read_json, require_file, where, write_json
from lmm.eval.files import field as get
from lmm.eval.scoring import (
    LLAVA_BENCH_CATEGORIES,
    MMVET_CAPABILITIES,
    Judge,
    LLaVABenchScore,
    MMVetScore,
    RuleJudge,
    mean_over_runs,
)
from lmm.eval.tasks.base import LOCAL, Benchmark, Question, QuestionFileBenchmark


class _Recording:
    """Wraps a judge and keeps every grade it gives, so the W&B table can show per-question judge scores (with
    several judge runs: each question's runs are consecutive)."""

    def __init__(self, judge: Judge) -> None:
        self.judge, self.grades = judge, []

    def grade_mmvet(self, question: str, answer: str, prediction: str) -> float:
        grade = self.judge.grade_mmvet(question, answer, prediction)
        self.grades.append(float(grade))
        return grade

    def review_llava_bench(self, context: Any, question: str, reference: str, prediction: str) -> tuple[float, float]:
        pair = self.judge.review_llava_bench(context, question, reference, prediction)
        self.grades.append(pair[1] / pair[0] if pair[0] > 0 else 0.0)
        return pair


class Judged(Benchmark):
    """A judge-graded benchmark. `judge_runs` passes of the judge are averaged (LLaVA reports the mean of 3 GPT-4
    runs, eval.md 4.10-4.12); None: 1 for a deterministic judge (the offline RuleJudge), else 3."""

    headline_scale = 1.0
    headline_key = "score"

    def __init__(self, judge: Judge | None = None, judge_runs: int | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("max_new_tokens", 1024)
        super().__init__(**kwargs)
        self.judge: Judge = judge if judge is not None else RuleJudge()
        self.judge_runs = int(judge_runs) if judge_runs is not None else \
            (1 if getattr(self.judge, "deterministic", False) else 3)
        if self.judge_runs < 1:
            raise ValueError(f"{self.name}: judge_runs must be >= 1, got {judge_runs}")

    def judge_temperature(self) -> float | None:
        """The sampling temperature of this benchmark's judge requests (None: not an LLM)."""
        return None

    def describe(self) -> dict[str, Any]:
        out = super().describe() | {"judge": type(self.judge).__name__, "judge_runs": self.judge_runs,
                                    "judge_model": getattr(self.judge, "model", None),
                                    "judge_temperature": self.judge_temperature()}
        if getattr(self.judge, "url", None):
            out["judge_url"] = self.judge.url
        if isinstance(self.judge, RuleJudge):
            out["judge_note"] = "RuleJudge: word-overlap stand-in, NOT comparable to GPT-4-judged published numbers"
        return out

    def _judged(self, metric: Any, judge: _Recording) -> tuple[dict[str, float], list[float | None], dict]:
        """Scores (mean over runs), each question's mean grade, and every run's scores for results.json."""
        runs = self.judge_runs
        grades = judge.grades
        per = [sum(grades[i:i + runs]) / runs for i in range(0, len(grades), runs)]
        per_run = metric.compute_runs()  # one sync; the reported scores are derived from the runs
        return mean_over_runs(per_run), per, {"judge_run_scores": per_run}


class MMVet(QuestionFileBenchmark, Judged):
    """MM-Vet: judge-graded open answers (GPT-4 grader prompt; offline RuleJudge by default). Writes the
    official results JSON {"v1_<qid>": answer} for the MM-Vet grader."""

    kind = "mmvet"

    def _load(self) -> list[Question]:
        qs = [q for _, _, q in self._llava_questions(self.questions_file, self.image_root)]
        if self.annotations:
            p = require_file(self.annotations, "MM-Vet annotations (mm-vet.json)")
            gt = read_json(p)
            if not isinstance(gt, dict):
                raise BenchmarkFileError(f"{p}: expected a JSON object keyed by 'v1_<id>'")
            for q in qs:
                key = f"v1_{q.question_id}"
                entry = gt.get(key)
                if entry is None:
                    raise BenchmarkFileError(f"{q.where}: {key!r} is not in {p}")
                at = f"{p}: {key}"
                caps = get(entry, "capability", at, list)
                if unknown := set(caps) - set(MMVET_CAPABILITIES):
                    raise BenchmarkFileError(f"{at}: unknown capabilities {sorted(unknown)}")
                q.reference = get(entry, "answer", at, str)
                q.meta.update(question=get(entry, "question", at, str), capabilities=caps)
        return qs

    def judge_temperature(self) -> float | None:
        temperatures = getattr(self.judge, "mmvet_temperatures", None)
        return None if not temperatures else float(temperatures[0])  # unparsable replies retry hotter

    def _score(self, qs: list[Question], texts: list[str]) -> tuple:
        judge = _Recording(self.judge)
        metric = MMVetScore(judge=judge, runs=self.judge_runs, **LOCAL)
        metric.update(texts, [q.meta["question"] for q in qs], [q.reference for q in qs],
                      [q.meta["capabilities"] for q in qs])
        return self._judged(metric, judge)

    def write_submission(self, out_dir: Path, qs: Sequence[Question], texts: Sequence[str]) -> list[Path]:
        return [write_json(out_dir / "mmvet_results.json",
                            {f"v1_{q.question_id}": t for q, t in zip(qs, texts, strict=True)})]


class LLaVABench(Judged):
    """LLaVA-Bench-in-the-Wild: judge-reviewed against GPT-4 reference answers, relative score x100."""

    kind = "llava_bench"

    def __init__(self, questions: str, context: str | None, references: str | None, image_root: str,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.questions_file, self.context, self.references, self.image_root = questions, context, references, \
            image_root

    def files(self) -> dict[str, str | None]:
        return {"questions": self.questions_file, "context": self.context, "references": self.references}

    def _load(self) -> list[Question]:
        rows = self._llava_questions(self.questions_file, self.image_root)
        for _, row, q in rows:
            category = get(row, "category", q.where, str)
            if category not in LLAVA_BENCH_CATEGORIES:
                raise BenchmarkFileError(f"{q.where}: category {category!r} is not one of {LLAVA_BENCH_CATEGORIES}")
            q.meta.update(category=category, image_name=get(row, "image", q.where, str))
        if self.context and self.references:
            pc, pr = require_file(self.context, "LLaVA-Bench context.jsonl"), \
                require_file(self.references, "LLaVA-Bench answers_gpt4.jsonl")
            captions = {get(r, "image", where(pc, n), str): get(r, "caption", where(pc, n), (str, list))
                        for n, r in read_jsonl(pc, BenchmarkFileError)}
            refs = {get(r, "question_id", where(pr, n)): get(r, "text", where(pr, n), str)
                    for n, r in read_jsonl(pr, BenchmarkFileError)}
            for _, _, q in rows:
                if q.question_id not in refs:
                    raise BenchmarkFileError(f"{q.where}: question_id {q.question_id!r} has no reference in {pr}")
                if q.meta["image_name"] not in captions:
                    raise BenchmarkFileError(f"{q.where}: image {q.meta['image_name']!r} has no caption in {pc}")
                q.reference = refs[q.question_id]
                q.meta["context"] = captions[q.meta["image_name"]]
        return [q for _, _, q in rows]

    def judge_temperature(self) -> float | None:
        temperature = getattr(self.judge, "llava_bench_temperature", None)
        return None if temperature is None else float(temperature)

    def _score(self, qs: list[Question], texts: list[str]) -> tuple:
        judge = _Recording(self.judge)
        metric = LLaVABenchScore(judge=judge, runs=self.judge_runs, **LOCAL)
        metric.update(texts, [q.text for q in qs], [q.reference for q in qs], [q.meta["context"] for q in qs],
                      [q.meta["category"] for q in qs])
        return self._judged(metric, judge)
